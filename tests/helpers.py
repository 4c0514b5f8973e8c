"""What the test files share (fixtures are in conftest.py): running the script as a user does, reading what it
printed and saved, a local MNIST mirror, and instruments that watch federated training from outside.

Every instrument goes through the script's and the package's public functions: the script's
train() takes the visits it walks and FedAvg takes the training steps it runs, so a test hands
them recording ones; nothing of the script is patched.
"""
import http.server
import io
import os
import re
import shutil
import subprocess
import sys
import threading

import psutil
import pytest
import torch
import torch.nn.functional as F
import torch.optim as optim

import federated_learning as fl
from fake_mnist import synthetic_digits, write_mnist  # noqa: F401  (the tests take them from here)
from fl_tutorial.core import mnist, report
from fl_tutorial.core.model import SimpleCNN
from fl_tutorial.experiment import options, owners
from fl_tutorial.experiment.fedavg import FedAvg
from fl_tutorial.privacy.aggregation import ServerAverage
from fl_tutorial.pysyft.visits import visits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "federated_learning.py")
FAST = ["--lr", "0.05", "--log-interval", "1000"]
CPU = torch.device("cpu")


# --- the script, as a user runs it ---------------------------------------------------------------------------

def run_script(*args, env=None, python=None, timeout=600):
    """Run federated_learning.py as a user would; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [python or sys.executable, SCRIPT, *args], cwd=ROOT, env=full_env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout,
    )


def coordinator(*args):
    """The script in the background, for tests that interrupt or break a run."""
    return subprocess.Popen([sys.executable, SCRIPT, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


def assert_clean_exit(result):
    """No traceback and no 'Exception ignored' (syft's pointer GC at shutdown), ever."""
    for marker in ("Traceback", "Exception ignored"):
        assert marker not in result.stderr, result.stderr
        assert marker not in result.stdout, result.stdout


def parse(argv):
    """The script's settings for these flags (argparse's usage error, SystemExit 2, if they cannot work)."""
    return options.parse(fl.build_parser(), argv)


def args_for(data_dir, *flags):
    return parse(["--data-dir", data_dir, "--lr", "0.05", "--log-interval", "1000000", *flags])


def assert_usage_error(capsys, argv, complaint):
    """The flags end with argparse's usage error (exit status 2) that says `complaint`."""
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    assert complaint in capsys.readouterr().err


def printed_results(result):
    return re.findall(r"Test set: Average loss: [\d.]+, Accuracy: \d+/\d+", result.stdout)


def saved(path):
    return torch.load(str(path))


def connect_flag(addresses):
    return ",".join("{}={}:{}".format(*address) for address in addresses)


def make_certificate(folder, name):
    """A self-signed RSA 2048 / SHA-256 certificate for 127.0.0.1 (OpenSSL 3 refuses SHA-1)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = os.path.join(folder, name + ".pem"), os.path.join(folder, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-sha256", "-days", "2", "-nodes",
                    "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def worker_processes(basetemp):
    """Every `fl_tutorial.worker` process started with a path under `basetemp`: this test session's."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "fl_tutorial.worker" in cmdline and any(arg.startswith(basetemp) for arg in cmdline):
            found.append(proc)
    return found


# --- a local MNIST mirror for the download tests -----------------------------------------------------------

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


# --- federated training, watched from outside --------------------------------------------------------------

def peek(pointer):
    """A local copy of what a pointer points to, read from the VirtualWorker's store: no message sent."""
    return pointer.location.get_obj(pointer.child.id_at_location).clone()


class Recorder:
    """Records every visit and batch of training, through the step functions the script hands out.

    Each batch is kept with torch's random state (dropout draws from it), so that plain
    PyTorch can replay the very same steps. Before every visit of the script's train(), and
    after it, the model must be back on the server.
    """

    def __init__(self, model):
        self.model, self.visits, self.batches = model, [], []

    def watch(self, client_visits):
        """What fl.train() walks: the visits, each checked and recorded."""
        for worker, batches in client_visits:
            self.assert_on_the_server()
            self.visits.append(worker.id)
            yield worker, self.record(batches)
        self.assert_on_the_server()

    def train_steps(self, model, device, batches, optimizer, progress):
        """fl.train_steps(), as FedAvg runs it on a copy: the copy's visit and batches recorded."""
        self.visits.append(model.location.id)
        fl.train_steps(model, device, self.record(batches), optimizer, progress)

    def record(self, batches):
        for data, target in batches:
            assert type(data.child).__name__ == "PointerTensor"
            self.batches.append((data.location.id, peek(data), peek(target), torch.get_rng_state()))
            yield data, target

    def assert_on_the_server(self):
        assert self.model.location is None, "the model is not back on the server"
        assert all(not hasattr(p, "child") for p in self.model.parameters())


def replay_in_plain_pytorch(initial_state, batches, lr=0.05):
    """Plain PyTorch SGD over the recorded batches, each with the RNG state it had; returns the weights."""
    plain = SimpleCNN()
    plain.load_state_dict(initial_state)
    plain.train()
    optimizer = optim.SGD(plain.parameters(), lr=lr)
    for _, data, target, rng_state in batches:
        torch.set_rng_state(rng_state)
        optimizer.zero_grad()
        F.cross_entropy(plain(data), target).backward()
        optimizer.step()
    return plain.state_dict()


def train_epochs(sy, settings, model, workers, epochs, averaging=None, recorder=None):
    """Steps 2 to 6 of the script without the test: its own step functions, recorded if asked."""
    federated, _ = owners.shares(settings, workers, fl.federated_mnist)
    loader = sy.FederatedDataLoader(federated, batch_size=64, shuffle=True)
    optimizer = fl.sgd(settings, model.parameters())  # the optimizer the script uses for this loop
    train_steps = recorder.train_steps if recorder else fl.train_steps
    fedavg = FedAvg(settings, averaging or ServerAverage(), train_steps, CPU, 64)
    for epoch in range(1, epochs + 1):
        with report.Progress("Epoch", epoch, len(federated), settings.log_interval, stream=io.StringIO()) as progress:
            if settings.strategy == "fedavg":
                fedavg.round(model, loader, progress)
            else:
                client_visits = visits(loader, settings.sync == "every-batch", settings.max_batches)
                fl.train(model, CPU, recorder.watch(client_visits) if recorder else client_visits, optimizer,
                         progress)
    return loader
