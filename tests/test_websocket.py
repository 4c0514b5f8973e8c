"""Clients in their own processes (--workers websocket): same results, security, faults, clean exits.

Every server here binds 127.0.0.1 on a port it picks itself, and every process a
test starts is stopped by the test, also when it fails.
"""
import json
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from fl_tutorial.pysyft.owners import ClientError
from fl_tutorial.remote import security, websocket_clients
from fl_tutorial.remote.local_clients import LocalClients
from helpers import (
    FAST,
    ROOT,
    assert_clean_exit,
    assert_usage_error,
    connect_flag,
    coordinator,
    make_certificate,
    printed_results,
    run_script,
    saved,
    worker_processes,
    write_mnist,
)


@pytest.mark.slow
@pytest.mark.parametrize("flags", [
    [],
    ["--num-clients", "3", "--partition", "noniid", "--strategy", "fedavg", "--local-epochs", "2"],
    ["--data-from", "server"],
], ids=["sequential-iid", "fedavg-noniid-3", "data-sent-by-server"])
def test_websocket_run_ends_with_the_weights_of_the_virtual_run(mnist_dir, tmp_path, flags):
    # dropout 0: no random numbers drawn on the clients, so both runs compute the same thing.
    runs = {}
    for workers in ("virtual", "websocket"):
        extra = [f for f in flags if workers == "websocket" or f not in ("--data-from", "server")]
        result = run_script("--workers", workers, "--data-dir", mnist_dir, "--epochs", "2", "--dropout", "0",
                            "--save-model", str(tmp_path / workers), *FAST, *extra)
        assert result.returncode == 0, result.stderr
        assert_clean_exit(result)
        runs[workers] = result
    assert printed_results(runs["websocket"]) == printed_results(runs["virtual"])
    assert len(printed_results(runs["virtual"])) == 2
    virtual, websocket = saved(tmp_path / "virtual"), saved(tmp_path / "websocket")
    for name in virtual:
        assert torch.allclose(virtual[name], websocket[name], rtol=0, atol=1e-6), name
    table = runs["websocket"].stdout.split("\n\n")[0]
    assert table == runs["virtual"].stdout.split("\n\n")[0] and "client2" in table


@pytest.mark.slow
def test_fedavg_clients_training_at_once_end_where_training_in_turn_ends(mnist_dir, tmp_path):
    # Each client draws dropout from its own generator, so dropout can stay on. The weights agree to
    # float tolerance, not bit for bit: at once, each client process uses its share of the cores, and
    # torch sums in another order with another number of threads.
    runs = {}
    for mode in ("at-once", "in-turn"):
        flags = ["--in-turn"] if mode == "in-turn" else []
        result = run_script("--workers", "websocket", "--strategy", "fedavg", "--num-clients", "3", "--epochs", "2",
                            "--data-dir", mnist_dir, "--save-model", str(tmp_path / mode), *FAST, *flags)
        assert result.returncode == 0, result.stderr
        assert_clean_exit(result)
        runs[mode] = saved(tmp_path / mode)
    for name in runs["in-turn"]:
        assert torch.allclose(runs["at-once"][name], runs["in-turn"][name], rtol=0, atol=1e-5), name


@pytest.fixture
def token_file(tmp_path):
    path = str(tmp_path / "token.txt")
    security.write_new_token(path)
    return path


def running_clients(data_dir, token_file, ids=("client1", "client2"), extra_args=()):
    """Clients started with `python -m fl_tutorial.worker`, as on other machines; stopped by the caller."""
    return LocalClients(list(ids), data_dir, token_file, extra_args)


@pytest.mark.slow
def test_clients_keep_their_own_data(tmp_path, mnist_dir, token_file):
    # The clients read MNIST from their own folder, with 300 samples; the coordinator's has 640.
    own = write_mnist(tmp_path / "clients", n_train=300)
    with running_clients(own, token_file) as (addresses, _):
        result = run_script("--workers", "websocket", "--connect", connect_flag(addresses), "--token-file",
                            token_file, "--data-dir", mnist_dir, "--epochs", "1", *FAST)
    assert result.returncode == 0, result.stderr
    rows = result.stdout.split("\n\n")[0].splitlines()[1:]
    assert [row.split()[:2] for row in rows] == [["client1", "150"], ["client2", "150"]]


@pytest.mark.slow
def test_a_wrong_or_missing_token_is_refused_and_the_client_keeps_serving(tmp_path, mnist_dir, token_file):
    wrong = str(tmp_path / "wrong.txt")
    security.write_new_token(wrong)
    clients = running_clients(mnist_dir, token_file)
    with clients as (addresses, _):
        connect = connect_flag(addresses)
        for token_flags in (["--token-file", wrong], []):
            result = run_script("--workers", "websocket", "--connect", connect, "--data-dir", mnist_dir,
                                *token_flags, *FAST)
            assert result.returncode == 1
            assert result.stderr.strip().splitlines() == [
                "error: client1 at 127.0.0.1:{} refused the connection: wrong or missing token "
                "(give --token-file the file the client was started with)".format(addresses[0][2])]
            assert_clean_exit(result)
        assert clients.died() == []
        refusals = [line for line in clients.log_tail("client1", lines=10) if "refused a connection" in line]
        assert len(refusals) == 2 and all(line.endswith("wrong or missing token") for line in refusals)
        result = run_script("--workers", "websocket", "--connect", connect, "--data-dir", mnist_dir,
                            "--token-file", token_file, "--epochs", "1", *FAST)
        assert result.returncode == 0, result.stderr
        assert len(printed_results(result)) == 1


@pytest.mark.slow
def test_tls_is_verified_against_the_ca(tmp_path, mnist_dir, token_file):
    cert, key = make_certificate(str(tmp_path), "client")
    stranger, _ = make_certificate(str(tmp_path), "stranger")
    with running_clients(mnist_dir, token_file, extra_args=["--cert", cert, "--key", key]) as (addresses, _):
        connect = connect_flag(addresses)
        common = ["--workers", "websocket", "--connect", connect, "--token-file", token_file, "--data-dir", mnist_dir]
        trusted = run_script(*common, "--ca", cert, "--epochs", "1", *FAST)
        assert trusted.returncode == 0, trusted.stderr
        assert len(printed_results(trusted)) == 1
        trained_there = run_script(*common, "--ca", cert, "--strategy", "fedavg", "--train-on", "client", *FAST)
        assert trained_there.returncode == 0, trained_there.stderr  # syft's fit, over wss:// too
        assert len(printed_results(trained_there)) == 1
        untrusted = run_script(*common, "--ca", stranger, *FAST)
        assert untrusted.returncode == 1
        assert "client1 at 127.0.0.1:{} sent a certificate that --ca {} does not verify".format(
            addresses[0][2], stranger) in untrusted.stderr
        plain = run_script(*common, *FAST)
        assert plain.returncode == 1 and "give --ca" in plain.stderr
        for result in (untrusted, plain):
            assert_clean_exit(result)
            assert len(result.stderr.strip().splitlines()) == 1


def wait_for_epochs(metrics_path, proc, n, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(json.load(open(metrics_path))["epochs"]) >= n:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError("the run did not finish {} epochs".format(n))


@pytest.fixture(params=["sequential", "fedavg"])
def long_run(mnist_dir, tmp_path, tmp_path_factory, request):
    metrics = str(tmp_path / "m.json")
    proc = coordinator("--workers", "websocket", "--data-dir", mnist_dir, "--epochs", "1000",
                       "--strategy", request.param, "--metrics-out", metrics, *FAST)
    yield proc, metrics
    if proc.poll() is None:
        proc.kill()
    proc.communicate()
    for child in worker_processes(str(tmp_path_factory.getbasetemp())):  # only if the coordinator failed to stop
        # them: the test fails then
        child.kill()


@pytest.mark.slow
def test_a_client_killed_mid_run_ends_the_run_cleanly(long_run):
    proc, metrics = long_run
    wait_for_epochs(metrics, proc, 1)
    children = {p.cmdline()[p.cmdline().index("--id") + 1]: p for p in psutil.Process(proc.pid).children()}
    port, = [c.laddr.port for c in children["client2"].connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    killed_at = time.time()
    children["client2"].kill()
    out, err = proc.communicate(timeout=60)
    assert time.time() - killed_at < 60
    assert proc.returncode == 1
    assert re.fullmatch(r"error: client2 at 127\.0\.0\.1:{} (stopped answering \(.+\)|closed the connection); "
                        r"the run stops here".format(port), err.strip()), err
    assert "Traceback" not in out + err
    finished = json.load(open(metrics))["epochs"]
    assert len(finished) >= 1 and all("test_accuracy" in e for e in finished)
    psutil.wait_procs(list(children.values()), timeout=10)
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children.values())


@pytest.mark.slow
@pytest.mark.parametrize("signum, message", [(signal.SIGINT, "Interrupted."), (signal.SIGTERM, "Terminated.")])
def test_ctrl_c_or_sigterm_stops_the_clients_too(long_run, signum, message):
    proc, metrics = long_run
    wait_for_epochs(metrics, proc, 1)
    children = psutil.Process(proc.pid).children()
    assert len(children) == 2
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and err.strip() == message, err
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []


@pytest.mark.slow
def test_an_unreachable_client_gets_one_message(mnist_dir):
    with LocalClients(["client1"], mnist_dir) as (addresses, _):
        port = addresses[0][2]
    # The client is stopped now: its port refuses connections.
    start = time.time()
    result = run_script("--workers", "websocket", "--connect", "client1=127.0.0.1:{}".format(port),
                        "--data-dir", mnist_dir, *FAST)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: client1 at 127.0.0.1:{} cannot be reached: Connection refused (tried for {} s). Is "
        "`python -m fl_tutorial.worker --id client1` running there, on port {}?".format(
            port, websocket_clients.CONNECT_RETRY_SECONDS, port))
    assert time.time() - start < websocket_clients.CONNECT_RETRY_SECONDS + 20


@pytest.mark.parametrize("flags, message", [
    (["--connect", "client1"], "is not NAME=HOST:PORT"),
    (["--workers", "websocket", "--connect", "client1=127.0.0.1:70000"], "is not NAME=HOST:PORT"),
    (["--workers", "websocket", "--connect", "a=127.0.0.1:1,a=127.0.0.1:2"], "name each client once"),
    (["--workers", "websocket", "--connect", "a=127.0.0.1:1", "--num-clients", "2"],
     "--connect names 1 client(s), but --num-clients is 2"),
    (["--connect", "a=127.0.0.1:1"], "--connect needs --workers websocket"),
    (["--token-file", "t"], "--token-file needs --workers websocket"),
    (["--data-from", "clients"], "--data-from needs --workers websocket"),
    (["--workers", "websocket", "--ca", "ca.pem"], "--ca is for clients started elsewhere"),
    (["--dropout", "1"], "must be below 1"),
])
def test_bad_values_get_the_usage_error(capsys, flags, message):
    assert_usage_error(capsys, flags, message)


def run_worker(*args):
    return subprocess.run([sys.executable, "-m", "fl_tutorial.worker", *args], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120)


@pytest.mark.slow
def test_a_worker_refuses_to_listen_beyond_this_machine_without_a_token(mnist_dir):
    result = run_worker("--id", "client1", "--host", "0.0.0.0", "--data-dir", mnist_dir)
    assert result.returncode == 2
    assert "--host 0.0.0.0: listening beyond this machine needs --token-file" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_worker_on_a_taken_port_says_so(mnist_dir):
    with LocalClients(["client1"], mnist_dir) as (addresses, _):
        result = run_worker("--id", "other", "--port", str(addresses[0][2]), "--data-dir", mnist_dir)
    assert result.returncode == 2
    assert "cannot listen on 127.0.0.1:{}".format(addresses[0][2]) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("content", ["", "short", "two words here and there"])
def test_an_unusable_token_file_is_refused(tmp_path, content):
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(security.SecurityError, match="at least 16 characters"):
        security.read_token(str(path))


def test_the_token_check_is_exact():
    token = "a" * 32
    assert security.token_matches(token, "Bearer " + token)
    for header in (None, "", "Bearer " + token[:-1], "Bearer " + token + "a", token, "bearer " + token):
        assert not security.token_matches(token, header)


@pytest.mark.slow
def test_a_client_that_cannot_start_gets_one_message(tmp_path, monkeypatch):
    # A client process that stops at start (here: no MNIST in its folder, and no mirror) is a ClientError,
    # which the script prints as one line, not a StartError traceback.
    monkeypatch.setenv("MNIST_MIRRORS", "http://127.0.0.1:9/none/")
    with pytest.raises(ClientError, match=r"^client1 stopped at start \(exit status 1\): "):
        with websocket_clients.clients(None, ["client1"], str(tmp_path / "empty"), threads=1):
            pass
