"""The fixtures of the PySyft suite: small MNIST files, one syft hook, a local mirror, and no leftovers.

Tests never use the network: the data is generated (fake_mnist.py), every download
test serves files from a local HTTP server on 127.0.0.1 (offline.py fails any test
that reaches further), and no client process or token folder a test starts outlives it.
Plain helpers are in helpers.py.
"""
import gc
import glob
import gzip
import hashlib
import os
import tempfile

import pytest

from fl_tutorial.core import partition
from helpers import NAMES, Mirror, worker_processes, write_mnist
from offline import no_internet  # noqa: F401  (an autouse fixture)


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    return write_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def sy():
    from fl_tutorial.pysyft.env import import_syft

    return import_syft()


@pytest.fixture(scope="session")
def hook(sy):
    import torch

    return sy.TorchHook(torch)


@pytest.fixture(scope="session")
def session_workers(sy, hook):
    """One client1 and one client2 per session, as in the script (syft keys workers by id)."""
    return [sy.VirtualWorker(hook, id=name) for name in partition.client_names(2)]


@pytest.fixture
def workers(session_workers):
    yield session_workers
    for worker in session_workers:
        worker.clear_objects()
    gc.collect()


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path_factory):
    """No client process a test started, and no token folder it made, outlives the test (a module's own
    clients, started by its fixture before the test, stop when the module ends)."""
    basetemp = str(tmp_path_factory.getbasetemp())
    running = {p.pid for p in worker_processes(basetemp)}
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "fl-clients-*")))
    yield
    assert [p for p in worker_processes(basetemp) if p.pid not in running] == [], "a client process outlived the test"
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "fl-clients-*"))) <= before


@pytest.fixture
def mirror():
    server = Mirror()
    yield server
    server.close()


@pytest.fixture(scope="session")
def gz_files(tmp_path_factory):
    """The generated MNIST .gz files and the MD5s of their content, standing in for the real ones."""
    raw = os.path.join(write_mnist(tmp_path_factory.mktemp("source")), "MNIST", "raw")
    payloads = {n: open(os.path.join(raw, n + ".gz"), "rb").read() for n in NAMES}
    return payloads, {n: hashlib.md5(gzip.decompress(p)).hexdigest() for n, p in payloads.items()}
