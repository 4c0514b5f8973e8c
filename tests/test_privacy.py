"""Privacy between real parties: secure and trusted aggregation across client processes, and DP-FedAvg.

The cross-process runs use the real worker processes (python -m fl_tutorial.worker),
two of them watched from inside (tests/recording_coordinator.py, tests/peer_worker.py).
"""
import contextlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fl_tutorial.core.model import SimpleCNN
from fl_tutorial.privacy import dp, fixed_point, peer_sum
from fl_tutorial.privacy.aggregation import ServerAverage
from fl_tutorial.pysyft import client_training
from fl_tutorial.pysyft.owners import ClientError
from fl_tutorial.remote import security, websocket_clients
from fl_tutorial.remote.local_clients import LocalClients
from helpers import (
    FAST,
    ROOT,
    assert_clean_exit,
    assert_usage_error,
    connect_flag,
    make_certificate,
    parse,
    printed_results,
    run_script,
)

ROUNDS = 2
# 3 clients of 213 or 214 fake samples, 7 batches of 32 each a round.
CROSS = ["--workers", "websocket", "--strategy", "fedavg", "--num-clients", "3", "--batch-size", "32", *FAST]



def record_run(tmp_path, mnist_dir, aggregation, *extra):
    path = tmp_path / "{}.pt".format(aggregation)
    result = subprocess.run(
        [sys.executable, "-m", "tests.recording_coordinator", "--data-dir", mnist_dir, "--aggregation", aggregation,
         "--save-model", str(tmp_path / (aggregation + ".model")), "--epochs", str(ROUNDS), *CROSS, *extra],
        cwd=ROOT, env=dict(os.environ, RECORD=str(path), PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert_clean_exit(result)
    return result, torch.load(str(path)), torch.load(str(tmp_path / (aggregation + ".model")))


@pytest.fixture(scope="module")
def cross_runs(tmp_path_factory, mnist_dir):
    tmp_path = tmp_path_factory.mktemp("cross")
    return {aggregation: record_run(tmp_path, mnist_dir, aggregation)
            for aggregation in ("server", "secure", "trusted")}


@pytest.mark.parametrize("aggregation", ["secure", "trusted"])
def test_across_processes_the_weights_are_those_of_server_aggregation(cross_runs, aggregation):
    server, other = cross_runs["server"], cross_runs[aggregation]
    assert len(printed_results(other[0])) == ROUNDS
    for name in server[2]:
        assert torch.allclose(server[2][name], other[2][name], rtol=0, atol=1e-5), name
    assert any((server[2][name] != SimpleCNN().state_dict()[name]).any() for name in server[2])  # it trained


def updates_by_round(server_record):
    """Per round, per client: the update (weights - start) as a flat float64 vector, from the server run."""
    rounds, names = [], None
    for entry in server_record["updates"]:
        names = names or list(entry["start"])
        if not rounds or entry["client"] in rounds[-1]:
            rounds.append({})
        rounds[-1][entry["client"]] = dp.flatten(entry["weights"], names) - dp.flatten(entry["start"], names)
    return rounds


@pytest.mark.parametrize("aggregation", ["secure", "trusted"])
def test_no_message_at_the_coordinator_carries_one_client_update(cross_runs, aggregation):
    rounds = updates_by_round(cross_runs["server"][1])
    replies = cross_runs[aggregation][1]["replies"]
    assert rounds and len(rounds) == ROUNDS and all(len(r) == 3 for r in rounds)
    sums = [r for r in replies if r["command"] == "sum_shares"]
    assert len(sums) == ROUNDS * (3 if aggregation == "secure" else 1)
    for reply in replies:  # share_update answers with a count, nothing else
        if reply["command"] == "share_update":
            assert reply["reply"] == {"shared": 3 if aggregation == "secure" else 1}
    per_round = len(sums) // ROUNDS
    for index, updates in enumerate(rounds):
        got = [s["reply"]["sum"].numpy().view(np.uint64) for s in sums[index * per_round:(index + 1) * per_round]]
        total = fixed_point.decode(fixed_point.add(got))
        average = sum(updates.values()) / len(updates)  # the weights are the share sizes, 1/3 to within 0.5%
        assert (total - average).abs().max() < 0.01 * average.abs().max(), "the sums do not add up to the average"
        for ring in got:
            decoded = fixed_point.decode(ring)
            for client, update in updates.items():
                for hidden in (update, update / 3):  # plain or scaled, in floats or fixed point
                    assert (decoded - hidden).abs().max() > 1e-3, (aggregation, client)
                    assert not np.array_equal(ring, fixed_point.encode(hidden))
        if aggregation == "secure":  # each holder's sum is spread over the ring, like a share
            for ring in got:
                assert np.mean(ring >= 2 ** 63) == pytest.approx(0.5, abs=0.01)


@pytest.mark.slow
def test_what_a_client_receives_from_another_is_spread_over_the_ring(tmp_path, mnist_dir):
    token = str(tmp_path / "token")
    security.write_new_token(token)
    received = tmp_path / "received"
    received.mkdir()
    with LocalClients(["client1", "client2"], mnist_dir, token, ["--train-only"]) as (addresses, _), \
            recording_peer(mnist_dir, token, PEER_RECORD=str(received)) as (peer, _):
        result = run_script("--connect", connect_flag(addresses + peer), "--token-file", token,
                            "--data-dir", mnist_dir, "--aggregation", "secure", "--epochs", "1", *CROSS)
    assert result.returncode == 0, result.stderr
    shares = sorted(os.listdir(str(received)))
    assert shares == ["round-1-client3-from-client1.pt", "round-1-client3-from-client2.pt"]
    size = peer_sum.model_size()
    for name in shares:
        ring = torch.load(str(received / name)).numpy().view(np.uint64)
        assert ring.shape == (size,)
        assert_uniform_over_the_ring(ring)
    with pytest.raises(AssertionError):  # the encoded update itself is not: small numbers sit at the ring's ends
        assert_uniform_over_the_ring(fixed_point.encode(torch.randn(size, dtype=torch.float64) * 0.01))


def assert_uniform_over_the_ring(ring):
    """The top byte of each element is uniform on 0..255 (chi-square, 255 degrees of freedom, p < 1e-6 fails)."""
    counts = np.bincount((ring >> np.uint64(56)).astype(np.int64), minlength=256)
    expected = len(ring) / 256
    assert ((counts - expected) ** 2 / expected).sum() < 370


@contextlib.contextmanager
def recording_peer(mnist_dir, token, **env):
    """client3 as tests/peer_worker.py, started with PEER_RECORD or PEER_DIE in its environment."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        peer = LocalClients(["client3"], mnist_dir, token, ["--train-only"], module="tests.peer_worker")
        started = peer.__enter__()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v
    try:
        yield started
    finally:
        peer.__exit__(None, None, None)


@pytest.mark.slow
def test_over_tls_each_client_verifies_the_others_against_its_own_ca(tmp_path, mnist_dir):
    token = str(tmp_path / "token")
    security.write_new_token(token)
    cert, key = make_certificate(str(tmp_path), "clients")
    stranger, _ = make_certificate(str(tmp_path), "stranger")
    runs = {}
    for name, ca in (("verified", cert), ("stranger", stranger)):
        tls = ["--train-only", "--cert", cert, "--key", key, "--ca", ca]
        with LocalClients(["client1", "client2"], mnist_dir, token, tls) as (addresses, _):
            runs[name] = run_script("--connect", connect_flag(addresses), "--token-file", token, "--ca", cert,
                                    "--data-dir", mnist_dir, "--aggregation", "secure", "--epochs", "1",
                                    "--workers", "websocket", "--strategy", "fedavg", "--batch-size", "32", *FAST)
    assert runs["verified"].returncode == 0, runs["verified"].stderr
    assert len(printed_results(runs["verified"])) == 1
    refused = runs["stranger"]
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "client1 could not hand its share to client2" in refused.stderr and "verif" in refused.stderr


@pytest.mark.slow
def test_a_client_that_dies_during_aggregation_ends_the_run_with_one_line_naming_it(tmp_path, mnist_dir):
    token = str(tmp_path / "token")
    security.write_new_token(token)
    metrics = tmp_path / "m.json"
    with LocalClients(["client1", "client2"], mnist_dir, token, ["--train-only"]) as (addresses, _), \
            recording_peer(mnist_dir, token, PEER_DIE="1") as (peer, _):
        result = run_script("--connect", connect_flag(addresses + peer), "--token-file", token,
                            "--data-dir", mnist_dir, "--aggregation", "secure", "--epochs", "1", *CROSS,
                            "--metrics-out", str(metrics))
    assert result.returncode == 1
    assert_clean_exit(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "client3" in lines[0] and "nothing was decoded" in lines[0], result.stderr
    assert "Test set" not in result.stdout  # no average, no test
    assert not metrics.exists() or json.load(open(str(metrics)))["epochs"] == []


@pytest.mark.slow
def test_a_curious_coordinator_gets_no_single_clients_shares_summed(tmp_path, mnist_dir, hook):
    # Sent for real over 127.0.0.1 to a running client: the requests that would hand one client's update, or all
    # of a client's shares, to whoever asks. Each is refused; the honest request still gets its sum.
    token_file = str(tmp_path / "token")
    security.write_new_token(token_file)
    size = peer_sum.model_size()
    shares = {name: torch.randint(-2 ** 62, 2 ** 62, (size,), dtype=torch.int64) for name in ("client1", "client2")}
    with LocalClients(["curious-holder"], mnist_dir, token_file, ["--train-only"]) as (addresses, token):
        name, host, port = addresses[0]
        holder = websocket_clients.make_client_class()(hook, host, port, name, token=token)
        try:
            def send(round_id, *senders):
                for sender in senders:
                    assert holder.receive_share(round_id, sender, shares[sender]) == {"ok": True}

            send("early", "client1")  # the coordinator asks before the other clients have sent theirs
            assert "fewer than 2" in holder.sum_shares("early", ["client1"])["error"]
            send("one", "client1", "client2")
            assert "fewer than 2" in holder.sum_shares("one", ["client1", "client1"])["error"]
            send("part", "client1", "client2")
            assert "no share from nobody" in holder.sum_shares("part", ["client1", "nobody"])["error"]
            send("twice", "client1")
            assert "a second share" in holder.receive_share("twice", "client1", shares["client1"])["error"]
            assert "its own only holder" in holder.share_update("mine", 0.5, [[name, host, port, False]], 0.0)["error"]
            assert "named twice" in holder.share_update("mine", 0.5, [["a", host, 1, False]] * 2, 0.0)["error"]
            send("honest", "client1", "client2")
            total = holder.sum_shares("honest", ["client1", "client2"])["sum"]
            assert torch.equal(total, shares["client1"] + shares["client2"])  # the protocol's own request works
            assert "error" in holder.sum_shares("honest", ["client1", "client2"])  # once a round
        finally:
            holder.close()
            hook.local_worker._known_workers.pop(name, None)


@pytest.mark.slow
@pytest.mark.parametrize("command, kwargs", [
    ("load_share", {"rule": {"partition": "iid"}, "index": 0}),
    ("fit", {"dataset_key": "mnist-train"}),
    ("share_update", {"round_id": "r", "weight": 0.5, "holders": [], "noise_std": 0.0}),
    ("search", {"query": ["#data"]}),
])
def test_the_aggregator_takes_shares_and_sums_and_nothing_else(tmp_path, mnist_dir, hook, command, kwargs):
    token_file = str(tmp_path / "token")
    security.write_new_token(token_file)
    name = "aggregator-{}".format(command)
    started = LocalClients([name], mnist_dir, token_file, args_for={name: ["--aggregator"]})
    with started as (addresses, token):
        _, host, port = addresses[0]
        client = websocket_clients.make_client_class()(hook, host, port, name, token=token)
        try:
            with pytest.raises(ClientError, match="closed the connection"):
                client._send_msg_and_deserialize(command, **kwargs)
            log = "\n".join(started.log_tail(name, lines=50))
            assert "a worker command an aggregator does not run: {}".format(command) in log
        finally:
            client.close()
            hook.local_worker._known_workers.pop(name, None)


# --- DP-FedAvg ---------------------------------------------------------------------------------------------

def share(n=96, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen)


@pytest.mark.parametrize("bound", [1e-3, 0.05, 0.5])
def test_every_update_that_leaves_a_client_has_norm_at_most_c(bound):
    data, targets = share()
    start = SimpleCNN().state_dict()
    passes = [[list(range(i, i + 32)) for i in range(0, 96, 32)]]
    settings = {"lr": 0.5, "dropout": 0.0, "batch_size": 32, "clip": bound}
    reply = client_training.fit(data, targets, start, passes, settings, train_only=True)  # what the client sends
    names = list(start)
    norm = (dp.flatten(reply["weights"], names) - dp.flatten(start, names)).norm().item()
    unclipped = client_training.fit(data, targets, start, passes, dict(settings, clip=None), False)["weights"]
    assert (dp.flatten(unclipped, names) - dp.flatten(start, names)).norm().item() > bound  # clipping was needed
    assert norm <= bound and norm == pytest.approx(bound, rel=1e-5)


def test_the_noise_has_the_stated_standard_deviation():
    # 1.7 million draws: the sample std is within 0.3% of the true one with probability 1 - 1e-12.
    z, c, m = 1.3, 0.7, 4
    gen = dp.generator(seed=12345)
    draws = dp.noise((peer_sum.model_size(),), dp.server_std(z, c, m), gen)
    assert draws.std().item() == pytest.approx(z * c / m, rel=0.003) and abs(draws.mean().item()) < 1e-3
    # With secure aggregation each of the m clients adds its part; the average gets the same std.
    parts = torch.stack([dp.noise((200000,), dp.client_std(z, c, m), gen) for _ in range(m)]).mean(0)
    assert parts.std().item() == pytest.approx(z * c / m, rel=0.01)


def test_server_noise_goes_onto_the_average_of_the_clipped_updates():
    start = SimpleCNN().state_dict()
    same = [(100, {k: v + 0.01 for k, v in start.items()}), (300, {k: v + 0.01 for k, v in start.items()})]
    noisy = ServerAverage(noise_multiplier=2.0, clip=0.5, noise_seed=7).average(same, start)
    names = list(start)
    residual = dp.flatten(noisy, names) - dp.flatten(start, names) - 0.01
    assert residual.std().item() == pytest.approx(2.0 * 0.5 / 2, rel=0.01)


def test_epsilon_is_the_accountants_and_matches_published_values():
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    # Ours: 100 clients, 10 a round, Z = 1.1, 20 rounds; replace-one, sensitivity 2C (fl_tutorial/privacy/dp.py).
    ours = dp.Accountant(1.1, 1e-5, 100, 10).epsilon(20)
    library = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    library.compose(dp_accounting.SampledWithoutReplacementDpEvent(100, 10, dp_accounting.GaussianDpEvent(0.55)), 20)
    assert ours == library.get_epsilon(1e-5) and 0 < ours < math.inf
    everyone = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    everyone.compose(dp_accounting.GaussianDpEvent(0.55), 20)
    assert dp.Accountant(1.1, 1e-5, 10, 10).epsilon(20) == everyone.get_epsilon(1e-5) > ours  # no sampling: more
    assert dp.Accountant(0.0, 1e-5, 10, 10).epsilon(3) == math.inf
    # The library against a published table: TensorFlow Privacy's MNIST DP-SGD tutorial (tutorials/README.md,
    # "Select Parameters"): 60,000 samples, batch 256, delta 1e-5. Noise 1.12, 60 epochs: epsilon 2.92; noise 1.2,
    # 10 epochs: 1.20. That table converts RDP to epsilon with the classic bound, min over orders of
    # RDP(a) + log(1/delta)/(a - 1), on its orders; the library's own conversion is tighter.
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    for noise, epochs, published in ((1.12, 60, 2.92), (1.2, 10, 1.20)):
        accountant = rdp.RdpAccountant(orders)
        accountant.compose(dp_accounting.PoissonSampledDpEvent(256 / 60000, dp_accounting.GaussianDpEvent(noise)),
                           epochs * 60000 // 256)
        classic = min(r + math.log(1 / 1e-5) / (a - 1) for r, a in zip(accountant._rdp, orders))
        assert classic == pytest.approx(published, abs=0.005)
        assert accountant.get_epsilon(1e-5) <= published


@pytest.mark.slow
def test_the_accountants_own_test_suite_passes_with_these_pins(tmp_path):
    # dp-accounting 0.3.0 declares newer numpy and scipy than syft allows (requirements.txt): its own RDP
    # tests, shipped in the wheel, show that its accountant computes correctly with the pinned ones.
    import dp_accounting

    suite = os.path.join(os.path.dirname(dp_accounting.__file__), "rdp", "rdp_privacy_accountant_test.py")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull,
                             "--rootdir", str(tmp_path), suite], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True, cwd=str(tmp_path), timeout=600)
    assert result.returncode == 0 and " passed" in result.stdout, result.stdout[-2000:]


@pytest.mark.slow
def test_dp_fedavg_with_no_noise_and_a_huge_bound_is_fedavg(mnist_dir, tmp_path):
    runs = {}
    for name, flags in (("fedavg", []), ("dp", ["--dp-clip", "1e9", "--dp-noise", "0"])):
        result = run_script("--strategy", "fedavg", "--train-on", "client", "--num-clients", "4", "--epochs", "2",
                            "--data-dir", mnist_dir, "--save-model", str(tmp_path / name), *FAST, *flags)
        assert result.returncode == 0, result.stderr
        runs[name] = result
    fedavg, private = torch.load(str(tmp_path / "fedavg")), torch.load(str(tmp_path / "dp"))
    for name in fedavg:  # 640 samples, 160 a client: FedAvg's weights are DP's 1/m
        assert torch.allclose(fedavg[name], private[name], rtol=0, atol=1e-6), name
    assert "epsilon = inf" in runs["dp"].stdout and "epsilon" not in runs["fedavg"].stdout


@pytest.mark.slow
def test_a_dp_run_prints_epsilon_every_round_and_records_it(mnist_dir, tmp_path):
    # epsilon depends on the noise multiplier alone; a bound this small keeps 3 rounds of noise from making the
    # weights non-finite on any CPU (at 0.5 they overflowed on some)
    metrics, plot = tmp_path / "m.json", tmp_path / "p.png"
    result = run_script("--strategy", "fedavg", "--train-on", "client", "--num-clients", "4", "--clients-per-round",
                        "2", "--epochs", "3", "--dp-clip", "0.001", "--dp-noise", "1.5", "--data-dir", mnist_dir,
                        "--metrics-out", str(metrics), "--plot", str(plot), *FAST)
    assert result.returncode == 0, result.stderr
    data = json.load(open(str(metrics)))
    expected = [dp.Accountant(1.5, 1e-5, 4, 2).epsilon(r) for r in (1, 2, 3)]
    assert [e["epsilon"] for e in data["epochs"]] == expected and expected == sorted(expected)
    assert data["privacy"]["delta"] == 1e-5 and "replace-one" in data["privacy"]["accountant"]
    for r, eps in enumerate(expected, 1):
        assert "DP-FedAvg: epsilon = {:.3f} at delta = 1e-05 after {} round".format(eps, r) in result.stdout
    assert plot.stat().st_size > 0


@pytest.mark.slow
def test_secure_aggregation_across_processes_with_dp_noise_added_by_the_clients(mnist_dir, tmp_path):
    metrics = tmp_path / "m.json"
    result = run_script("--workers", "websocket", "--strategy", "fedavg", "--aggregation", "secure", "--epochs", "1",
                        "--batch-size", "32", "--dp-clip", "0.5", "--dp-noise", "1.0",
                        "--data-dir", mnist_dir, "--metrics-out", str(metrics), *FAST)
    assert result.returncode == 0, result.stderr
    assert_clean_exit(result)
    assert json.load(open(str(metrics)))["epochs"][0]["epsilon"] == dp.Accountant(1.0, 1e-5, 2, 2).epsilon(1)
    assert "DP-FedAvg: epsilon = " in result.stdout


@pytest.mark.parametrize("flags, complaint", [
    (["--strategy", "fedavg", "--train-on", "client", "--dp-noise", "1"], "--dp-noise needs --dp-clip"),
    (["--strategy", "fedavg", "--train-on", "client", "--dp-delta", "1e-6"], "--dp-delta needs --dp-clip"),
    (["--dp-clip", "1"], "use --strategy fedavg"),
    (["--strategy", "fedavg", "--dp-clip", "1", "--train-on", "coordinator"], "leave out --train-on coordinator"),
    (["--strategy", "fedavg", "--dp-clip", "1", "--data-from", "server", "--workers", "websocket"],
     "leave out --data-from server"),
    (["--strategy", "fedavg", "--train-on", "client", "--dp-clip", "0"], "must be > 0"),
    (["--strategy", "fedavg", "--train-on", "client", "--dp-clip", "1", "--dp-delta", "1"], "must be below 1"),
    (["--workers", "websocket", "--strategy", "fedavg", "--aggregation", "secure", "--train-on", "coordinator"],
     "across processes"),
    (["--workers", "websocket", "--strategy", "fedavg", "--aggregation", "trusted", "--aggregator", "h:1"],
     "--aggregator is for --aggregation trusted with --connect"),
    (["--workers", "websocket", "--strategy", "fedavg", "--aggregation", "trusted", "--connect", "c1=h:1,c2=h:2"],
     "give --aggregator HOST:PORT"),
])
def test_impossible_privacy_settings_get_the_usage_error(capsys, flags, complaint):
    assert_usage_error(capsys, flags, complaint)


@pytest.mark.parametrize("workers", ["virtual", "websocket"])
def test_dp_without_train_on_trains_on_the_clients(workers):
    settings = parse(["--strategy", "fedavg", "--dp-clip", "1", "--dp-noise", "1.1", "--workers", workers])
    assert settings.train_on == "client"
    assert parse(["--strategy", "fedavg", "--workers", workers]).train_on == (
        "client" if workers == "websocket" else "coordinator")


def test_the_privacy_table_runs_valid_flags_and_reports_a_diverged_run():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import fedavg_paper
    import privacy_table

    jobs = list(privacy_table.jobs(rounds=3, clip=0.5))
    assert [name for name, _ in jobs] == ["fedavg", "clip-only", "noise-0.01", "noise-0.1", "noise-1"]
    for name, flags in jobs:
        args = parse(fedavg_paper.COMMON + flags + ["--lr", str(privacy_table.LR)])
        assert (args.dp_clip, args.dp_noise) == ((None, None) if name == "fedavg" else
                                                 (0.5, None if name == "clip-only" else float(name[6:])))
    record = {"epoch": 1, "test_accuracy": 0.5, "seconds": 60.0, "epsilon": 7.7}
    config = {"dp_noise": 1.0, "dp_clip": 1.0}
    table = privacy_table.table({"noise-1": {"config": config, "epochs": [record], "stopped": ["error: ..."]}})
    assert table.splitlines()[-1] == "| noise-1 | 1 | 1 | 1 (then diverged) | 7.7 | 50.00% | 50.00% | 1 min |"
