"""The twin on Flower's deployment engine: a SuperLink and one SuperNode process per client on 127.0.0.1,

TLS verified against a CA the run makes, and only SuperNodes whose public key was
registered may join. Attacks: a stranger's key, a stranger's CA, plain HTTP.
Failures: a SuperNode killed or frozen mid-run, Ctrl-C and SIGTERM to the launcher.
"""
import json
import os
import queue
import re
import signal
import threading
import time

import pytest

from flower_twin import config, credentials, processes
from flower_twin.federation import CONNECTION, LocalFederation
from twin_helpers import (
    assert_one_clear_error,
    is_loopback_or_unbound,
    launch,
    sockets_of_this_test,
    start_launcher,
    write_mnist,
)

pytestmark = pytest.mark.slow  # make test-all: real SuperLinks and SuperNodes, attacks and failures


def test_each_supernode_trains_on_its_own_folder_over_tls_with_authenticated_nodes(mnist_dir, tmp_path):
    own = [write_mnist(tmp_path / "client1", n_train=300, seed=5),
           write_mnist(tmp_path / "client2", n_train=300, seed=9)]
    metrics = str(tmp_path / "metrics.json")
    result = launch("--engine", "deployment", "--data-dir", mnist_dir, "--client-data-dirs", ",".join(own),
                    "--max-batches", "2", "--metrics-out", metrics)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # The server's folder holds 640 training samples; each client's share of its own 300 is 150.
    assert re.search(r"^client1\s+150\s", result.stdout, re.M) and re.search(r"^client2\s+150\s", result.stdout, re.M)
    assert re.search(r"^Test set: Average loss: .*Accuracy: \d+/200 ", result.stdout, re.M)
    with open(metrics) as f:
        run = json.load(f)["run"]
    assert run["engine"] == "deployment" and run["status"] == "finished:completed"
    model_bytes = 1_715_594 * 4
    assert 4 * model_bytes < run["network_bytes"] < 6 * model_bytes  # two clients: the model down and up, once each


@pytest.fixture
def federation(mnist_dir):
    with LocalFederation("deployment", 1, [mnist_dir]) as fed:
        yield fed


def start_supernode(fed, name, private_key, ca, *extra):
    return fed.procs.start(name, ["flower-supernode", "--superlink", f"127.0.0.1:{fed.port}",
                                  "--root-certificates", ca, "--auth-supernode-private-key", private_key,
                                  "--node-config", "partition-id=0 num-partitions=1", "--max-retries", "2",
                                  "--port", str(processes.free_port()), *extra])


def online_nodes(fed):
    return [n for n in json.loads(fed.flwr("supernode", "list", CONNECTION, "--format", "json"))["nodes"]
            if n["status"] == "online"]


def wait_for_exit(proc, timeout=60):
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    return proc.poll()


def test_a_supernode_whose_key_was_never_registered_is_refused(federation):
    private, _ = credentials.supernode_keys(federation.folder, "stranger")  # its public key is not registered
    rogue = start_supernode(federation, "stranger", private, federation._path("ca.pem"))
    assert wait_for_exit(rogue) not in (None, 0)
    assert "Failed to activate SuperNode" in "\n".join(federation.procs.log_tail("stranger", 40))
    assert "No SuperNode found with the given public key" in open(federation.procs.log_path("superlink")).read()
    assert len(online_nodes(federation)) == 1  # client1, and no one else


def test_a_supernode_is_refused_by_a_superlink_its_ca_did_not_sign(federation, tmp_path):
    private, public = credentials.supernode_keys(federation.folder, "misled")
    federation.flwr("supernode", "register", public, CONNECTION)  # even a registered node will not talk to it
    credentials.certificate_authority(str(tmp_path))
    misled = start_supernode(federation, "misled", private, str(tmp_path / "ca.pem"))
    assert wait_for_exit(misled) not in (None, 0)
    assert "CERTIFICATE_VERIFY_FAILED" in "\n".join(federation.procs.log_tail("misled", 40))
    assert len(online_nodes(federation)) == 1


def test_the_superlink_speaks_no_plain_http(federation):
    private, public = credentials.supernode_keys(federation.folder, "plain")
    federation.flwr("supernode", "register", public, CONNECTION)
    plain = federation.procs.start("plain", ["flower-supernode", "--insecure", "--superlink",
                                             f"127.0.0.1:{federation.port}", "--auth-supernode-private-key",
                                             private, "--node-config", "partition-id=0 num-partitions=1",
                                             "--max-retries", "2", "--port", str(processes.free_port())])
    assert wait_for_exit(plain) not in (None, 0)
    assert len(online_nodes(federation)) == 1


class Output:
    """The launcher's stdout, read line by line in the background."""

    def __init__(self, proc):
        self.lines, self.all = queue.Queue(), []
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            self.all.append(line)
            self.lines.put((time.time(), line))

    def wait_for(self, pattern, timeout):
        """The time the first line matching `pattern` arrived, or None after `timeout` s."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                arrived, line = self.lines.get(timeout=1)
                if re.search(pattern, line):
                    return arrived
            except queue.Empty:
                pass
        return None


def supernode_pid(launcher, name):
    """The pid of the launcher's SuperNode `name` (it carries the launcher's marker, and --node-config)."""
    index = int(name[len("client"):]) - 1
    for pid in processes.marked(os.environ["FLOWER_TWIN_TEST"], "FLOWER_TWIN_TEST"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        supernode = any(part.endswith(b"flower-supernode") for part in cmd)
        if supernode and b"partition-id=%d " % index in b" ".join(cmd) + b" ":
            return pid
    raise AssertionError(f"no SuperNode {name} found")


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_a_supernode_that_dies_or_hangs_mid_run_ends_the_run_with_one_line_keeping_finished_rounds(
        mnist_dir, tmp_path, how):
    """killed: the launcher sees its process end, and the run ends within 60 s (in a few).

    frozen (SIGSTOP: a machine that hangs or drops off the network, which no launcher
    can see): Flower's SuperLink declares the node gone after two missed heartbeats,
    at most 60 s after its last one, and the ServerApp names the client."""
    metrics = str(tmp_path / "metrics.json")
    launcher = start_launcher("--engine", "deployment", "--data-dir", mnist_dir, "--epochs", "30",
                              "--max-batches", "1", "--metrics-out", metrics)
    output = Output(launcher)
    try:
        assert output.wait_for(r"^Test set:", timeout=240), "".join(output.all)[-3000:]
        os.kill(supernode_pid(launcher, "client2"), signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        stopped_at = time.time()
        noticed = output.wait_for(r"ServerApp raised an exception", timeout=120) if how == "frozen" else None
        launcher.wait(timeout=120)
        took = time.time() - stopped_at
        stderr = launcher.stderr.read()
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    result = type("Result", (), {"returncode": launcher.returncode, "stdout": "".join(output.all), "stderr": stderr})
    if how == "killed":
        assert_one_clear_error(result, "error: client2 (SuperNode) stopped during the run", "the run stops here")
        assert took < 60, took
    else:
        assert_one_clear_error(result, "error: client2 (SuperNode", "stopped answering", "heartbeat")
        assert noticed and noticed - stopped_at < 60 + 10, noticed - stopped_at  # 2 heartbeats, and the polling
        assert took < 60 + 30, took
    with open(metrics) as f:
        finished = json.load(f)["epochs"]
    assert 1 <= len(finished) < 30


@pytest.mark.parametrize("engine, sig", [("simulation", signal.SIGINT), ("deployment", signal.SIGTERM)])
def test_the_federation_keeps_to_127_0_0_1_and_ctrl_c_or_sigterm_stop_all_of_it(mnist_dir, engine, sig):
    launcher = start_launcher("--engine", engine, "--data-dir", mnist_dir, "--epochs", "30", "--max-batches", "1")
    output = Output(launcher)
    try:
        assert output.wait_for(r"^Test set:", timeout=240), "".join(output.all)[-3000:]
        # Mid-run: every socket of the SuperLink, the SuperNodes, the apps and Ray is on 127.0.0.1.
        sockets = sockets_of_this_test()
        assert len(sockets) >= 3
        beyond = [s for s in sockets if not all(is_loopback_or_unbound(a) for a in s)]
        assert not beyond, beyond
        launcher.send_signal(sig)
        assert launcher.wait(timeout=60) == 1
        assert launcher.stderr.read().strip().splitlines()[-1] == "Interrupted."
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    # nothing_left_running (conftest) checks that the SuperLink, SuperNodes, Ray and the apps are gone


def test_a_client_without_data_stops_the_run_with_one_line_naming_it(mnist_dir, tmp_path, monkeypatch):
    """Through `flwr run` itself, without the launcher's checks: the ServerApp asks each client first."""
    monkeypatch.setenv("MNIST_MIRRORS", "http://127.0.0.1:9/")  # client2's download fails at once, as offline
    values = dict(config.defaults(), **{"data-dir": mnist_dir, "max-batches": 1})
    with LocalFederation("deployment", 2, [mnist_dir, str(tmp_path / "empty")]) as fed:
        record = fed.run(config.APP_DIR, values, out=open(os.devnull, "w"))
    assert record["status"] == "finished:failed"
    assert record["error"].startswith("client2 cannot go on: Could not download train-images-idx3-ubyte.gz")
    assert "MNIST in {} is missing or damaged".format(tmp_path / "empty" / "MNIST" / "raw") in record["error"]
    assert "\n" not in record["error"]
