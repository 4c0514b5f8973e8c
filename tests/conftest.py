"""Shared fixtures: a small, learnable MNIST look-alike in IDX format, and one syft hook.

Tests never use the network: the data is generated here, and every download
test serves files from a local HTTP server on 127.0.0.1.
"""
import gc
import gzip
import hashlib
import http.server
import io
import os
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F
import torch.optim as optim

import federated_learning as fl
from fake_mnist import synthetic_digits, write_mnist  # noqa: F401  (tests import them from here too)
from offline import no_internet  # noqa: F401  (an autouse fixture)
from fl_tutorial import aggregation, mnist, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "federated_learning.py")


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    return write_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def sy():
    from fl_tutorial.env import import_syft

    return import_syft()


@pytest.fixture(scope="session")
def hook(sy):
    import torch

    return sy.TorchHook(torch)


@pytest.fixture(scope="session")
def session_workers(sy, hook):
    """One client1 and one client2 per session, as in the script (syft keys workers by id)."""
    return [sy.VirtualWorker(hook, id="client{}".format(i)) for i in (1, 2)]


@pytest.fixture
def workers(session_workers):
    yield session_workers
    for worker in session_workers:
        worker.clear_objects()
    gc.collect()


# --- a local MNIST mirror for the download tests -----------------------------------

NAMES = list(mnist.RAW_MD5)


def corrupt(payload):
    return payload[:100] + bytes([payload[100] ^ 0xFF]) + payload[101:]


class Mirror:
    """A local HTTP server; `files` maps a URL path to (bytes, mode): mode 'ok' or 'truncate'."""

    def __init__(self):
        self.files, self.requests = {}, []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                mirror.requests.append(self.path)
                if self.path not in mirror.files:
                    self.send_error(404)
                    return
                payload, mode = mirror.files[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                # 'truncate' drops the connection halfway, as an interrupted download does.
                self.wfile.write(payload if mode == "ok" else payload[: len(payload) // 2])

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, folder):
        return "http://127.0.0.1:{}/{}/".format(self.server.server_address[1], folder)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


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


# --- instruments for the federated training tests ------------------------------------

def peek(pointer):
    """A local copy of what a pointer points to, read from the VirtualWorker's store: no message sent."""
    return pointer.location.get_obj(pointer.child.id_at_location).clone()


@pytest.fixture
def recorder(monkeypatch):
    """Instruments train()'s visits: checks where the model is, and records every batch.

    Before each visit and after train() the model must be on the server. Each
    batch is recorded with torch's RNG state (dropout draws from it), so plain
    PyTorch can replay the very same steps.
    """
    log = {"visits": [], "batches": [], "model": None}
    real_visits = fl.visits

    def record(batches):
        for data, target in batches:
            assert type(data.child).__name__ == "PointerTensor"
            log["batches"].append((data.location.id, peek(data), peek(target), torch.get_rng_state()))
            yield data, target

    def recording_visits(*args, **kwargs):
        for worker, batches in real_visits(*args, **kwargs):
            model = log["model"]
            assert model.location is None, "model not back on the server before the next visit"
            assert all(not hasattr(p, "child") for p in model.parameters())
            log["visits"].append(worker.id)
            yield worker, record(batches)

    monkeypatch.setattr(fl, "visits", recording_visits)
    return log


def replay_in_plain_pytorch(initial_state, batches, lr=0.05):
    """Plain PyTorch SGD over the recorded batches, each with the RNG state it had; returns the weights."""
    plain = fl.SimpleCNN()
    plain.load_state_dict(initial_state)
    plain.train()
    optimizer = optim.SGD(plain.parameters(), lr=lr)
    for _, data, target, rng_state in batches:
        torch.set_rng_state(rng_state)
        optimizer.zero_grad()
        F.cross_entropy(plain(data), target).backward()
        optimizer.step()
    return plain.state_dict()


def assert_usage_error(capsys, argv, complaint):
    """parse_args(argv) ends with argparse's usage error (exit status 2) that says `complaint`."""
    with pytest.raises(SystemExit) as exit_info:
        fl.parse_args(argv)
    assert exit_info.value.code == 2
    assert complaint in capsys.readouterr().err


def args_for(data_dir, *flags):
    return fl.parse_args(["--data-dir", data_dir, "--lr", "0.05", "--log-interval", "1000000", *flags])


def train_epochs(sy, args, model, workers, epochs, averaging=None):
    federated, _ = fl.federated_mnist(args, tuple(workers))
    loader = sy.FederatedDataLoader(federated, batch_size=64, shuffle=True)
    optimizer = fl.sgd(args, model.parameters())  # the optimizer the script uses for this loop
    for epoch in range(1, epochs + 1):
        progress = report.Progress("Epoch", epoch, len(federated), args.log_interval, stream=io.StringIO())
        if args.strategy == "fedavg":
            fl.train_fedavg(args, model, torch.device("cpu"), loader, progress, averaging or aggregation.ServerAverage())
        else:
            fl.train(args, model, torch.device("cpu"), loader, optimizer, progress)
    return loader


def run_script(*args, env=None, python=None, timeout=600):
    """Run federated_learning.py as a user would; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [python or sys.executable, SCRIPT, *args], cwd=ROOT, env=full_env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout,
    )


def assert_clean_exit(result):
    """No traceback and no 'Exception ignored' (syft's pointer GC at shutdown), ever."""
    for marker in ("Traceback", "Exception ignored"):
        assert marker not in result.stderr, result.stderr
        assert marker not in result.stdout, result.stdout
