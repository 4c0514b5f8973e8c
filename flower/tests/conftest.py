"""Fixtures for the Flower twin's tests (Python 3.11+, .venv-flower); plain helpers are in twin_helpers.py.

The data is generated (tests/fake_mnist.py, shared with the PySyft suite); every
server binds 127.0.0.1; and every test checks that no process it started, nor any
process Flower or Ray started for it, is left running afterwards.
"""
import os
import signal
import time

import pytest

from flower_twin import federation, processes
from offline import no_internet  # noqa: F401  (an autouse fixture)
from twin_helpers import TEST_ID, TEST_MARKER, write_mnist

os.environ[TEST_MARKER] = TEST_ID  # every process a test starts, and its descendants, carry it
os.environ.update(federation.OFFLINE)


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    return write_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(autouse=True)
def nothing_left_running():
    """After each test: no process carrying this session's marker (Flower's, Ray's) is left; kill and fail if so."""
    yield
    # SuperExec and Ray's workers take a few seconds to notice their parent is gone; Ray's agents that were
    # still starting when a run was interrupted took over 20 s on a slow 2-core AMD EPYC
    deadline = time.time() + 45
    while processes.marked(TEST_ID, TEST_MARKER) and time.time() < deadline:
        time.sleep(0.5)
    left = processes.marked(TEST_ID, TEST_MARKER)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert not left, "processes left running: {}".format(
        [open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ")[:120] for p in left if
         os.path.exists(f"/proc/{p}")])
