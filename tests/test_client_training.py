"""Training on the client (--train-on client) and train-only data owners (fl_tutorial/pysyft/client_training.py).

Same weights as the course's pointer-by-pointer loop; a train-only worker refuses,
with real syft messages over 127.0.0.1, everything but its rule, training
requests and cleanup, and what it sends back is the weights and the counts.
"""
import itertools
import json
import re

import pytest
import torch

import federated_learning as fl
from fl_tutorial.core.model import SimpleCNN
from fl_tutorial.experiment import owners
from fl_tutorial.pysyft import client_training, wire
from fl_tutorial.pysyft.owners import ClientError
from fl_tutorial.pysyft.visits import visits
from fl_tutorial.remote import security, websocket_clients
from fl_tutorial.remote.local_clients import LocalClients
from helpers import FAST, assert_clean_exit, assert_usage_error, parse, printed_results, run_script, saved


@pytest.mark.parametrize("flags", [
    pytest.param([], id="sequential-iid"),
    pytest.param(["--partition", "noniid", "--max-batches", "7"], id="sequential-noniid-max-batches",
                 marks=pytest.mark.slow),
    pytest.param(["--strategy", "fedavg"], id="fedavg-iid"),
    pytest.param(["--strategy", "fedavg", "--num-clients", "3", "--partition", "noniid", "--local-epochs", "2",
                  "--in-turn"], id="fedavg-noniid-3-in-turn", marks=pytest.mark.slow),
    pytest.param(["--strategy", "fedavg", "--num-clients", "3", "--clients-per-round", "2", "--prox-mu", "0.5"],
                 id="fedavg-sampled-fedprox", marks=pytest.mark.slow),
])
def test_training_on_the_client_ends_with_the_weights_of_training_from_the_coordinator(mnist_dir, tmp_path, flags):
    # dropout 0: no random numbers drawn on the clients, so both compute the same thing, batch for batch.
    runs = {}
    for where in ("coordinator", "client"):
        result = run_script("--workers", "websocket", "--train-on", where, "--data-dir", mnist_dir, "--epochs", "2",
                            "--dropout", "0", "--save-model", str(tmp_path / where), *FAST, *flags)
        assert result.returncode == 0, result.stderr
        assert_clean_exit(result)
        runs[where] = result
    coordinator, client = saved(tmp_path / "coordinator"), saved(tmp_path / "client")
    for name in coordinator:
        assert torch.allclose(coordinator[name], client[name], rtol=0, atol=1e-5), name
    assert len(printed_results(runs["client"])) == 2
    table = runs["client"].stdout.split("\n\n")[0]
    assert table == runs["coordinator"].stdout.split("\n\n")[0] and "client2" in table


@pytest.mark.slow
def test_websocket_fedavg_trains_on_the_clients_by_default_and_they_are_train_only(mnist_dir):
    result = run_script("--workers", "websocket", "--strategy", "fedavg", "--data-dir", mnist_dir, "--epochs", "1",
                        "--log-interval", "1", *FAST[:2])
    assert result.returncode == 0, result.stderr
    assert_clean_exit(result)
    assert "Test set: Average loss" in result.stdout
    assert re.search(r"Worker: client1\tLoss: -$", result.stdout, re.M), "a train-only client keeps its losses"


@pytest.mark.parametrize("flags, complaint", [
    (["--data-from", "server"], "--train-on client trains on the clients' own data, a visit at a time: leave out "
                                "--data-from server"),
    (["--sync", "every-batch"], "leave out --sync every-batch"),
])
def test_training_on_the_client_needs_the_clients_own_data_and_whole_visits(capsys, flags, complaint):
    assert_usage_error(capsys, ["--workers", "websocket", "--train-on", "client", *flags], complaint)


def test_batches_too_small_for_the_train_only_clients_it_starts_stop_before_they_start(capsys):
    assert_usage_error(capsys, ["--workers", "websocket", "--strategy", "fedavg", "--batch-size", "8"],
                       "--batch-size 8: the clients this run starts are train-only data owners, which train on "
                       "batches of at least 16 samples; use --batch-size 16 or more, or --train-on coordinator")


# --- what a data owner trains on ---------------------------------------------------------------------------

def test_plans_are_the_batches_of_the_course_loop(sy, hook, workers, mnist_dir):
    args = parse(["--data-dir", mnist_dir, "--partition", "noniid", "--seed", "5"])
    federated, described = owners.shares(args, tuple(workers), fl.federated_mnist)
    shares = sy.FederatedDataset([client_training.Share(workers[i], len(federated.datasets[w.id]))
                                  for i, w in enumerate(workers)])
    targets = {w.id: federated.datasets[w.id].targets.copy().get() for w in workers}
    for max_batches, local_epochs in ((None, 1), (7, 1), (7, 2), (None, 2)):
        torch.manual_seed(3)
        pointers = visits(sy.FederatedDataLoader(federated, batch_size=64, shuffle=True), max_batches=max_batches,
                          local_epochs=local_epochs)
        expected = [(w.id, [target.copy().get().tolist() for _, target in batches]) for w, batches in pointers]
        torch.manual_seed(3)
        planned = client_training.plans(sy.FederatedDataLoader(shares, batch_size=64, shuffle=True), max_batches,
                                        local_epochs)
        got = [(w.id, [targets[w.id][b].tolist() for one_pass in passes for b in one_pass]) for w, passes in planned]
        assert got == expected and len(got) == (1 if (max_batches, local_epochs) == (7, 2) else 2)


@pytest.mark.parametrize("passes, batch_size, train_only, says", [
    ("not a list", 64, False, "the plan is not a list of passes"),
    ([[[0, 1]], [[0, 99]]], 64, False, "a batch names a sample outside the share"),
    ([[[0, 1], [1, 2]]], 64, False, "a pass names a sample twice"),
    ([[[0, 0]]], 64, False, "a pass names a sample twice"),
    ([[[]]], 64, False, "a batch is empty"),
    ([[[0, 1, 2]]], 2, False, "larger than the batch size"),
    ([[[True]]], 64, False, "a batch names a sample outside the share"),
    ([[[0]]], 1, True, "a train-only data owner trains on batches of at least 16 samples, not 1"),
    ([[list(range(20)), [20]]], 32, True, "a batch of 20 samples is neither full (32) nor the last of a whole pass"),
    ([[list(range(16)), [16]]], 16, True, "a batch of 1 samples is neither full (16) nor the last of a whole pass"),
], ids=itertools.count())
def test_plans_a_data_owner_does_not_train_on(passes, batch_size, train_only, says):
    with pytest.raises(client_training.PlanError, match=re.escape(says)):
        client_training.check_plan(passes, 40, batch_size, train_only)


def test_a_whole_pass_may_end_with_a_small_batch_even_when_train_only():
    client_training.check_plan([[list(range(16)), list(range(16, 32)), list(range(32, 40))]], 40, 16, True)


def test_fit_is_plain_sgd_on_the_planned_batches():
    torch.manual_seed(0)
    data, targets = torch.randn(40, 1, 28, 28), torch.randint(0, 10, (40,))
    model = SimpleCNN(dropout=0.0)
    passes = [[[3, 1, 4, 15, 9, 26, 5, 35], [2, 7, 18, 28]], [[0, 1, 2, 3, 4, 5, 6, 7]]]
    reply = client_training.fit(data, targets, model.state_dict(), passes,
                                {"lr": 0.1, "dropout": 0.0, "batch_size": 8}, train_only=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for batch in (b for one_pass in passes for b in one_pass):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(data[batch]), targets[batch]).backward()
        optimizer.step()
    for name, tensor in model.state_dict().items():
        assert torch.allclose(tensor, reply["weights"][name], rtol=0, atol=1e-6), name
    assert reply["samples"] == 40 and [n for n, _ in reply["losses"]] == [8, 4, 8]


@pytest.mark.parametrize("reply, says", [
    (None, "no weights"),
    ({"weights": {}, "samples": 1, "losses": None}, "other parameters than SimpleCNN's"),
    ("float", "of another shape or type"),
    ("nan", "is not finite"),
    ("no count", "no sample count"),
    ("wrong losses", "losses that are not one per batch"),
])
def test_a_client_reply_that_does_not_fit_the_request_is_named(reply, says):
    weights = SimpleCNN().state_dict()
    good = {"weights": {k: v.clone() for k, v in weights.items()}, "samples": 40, "losses": [(8, 0.5), (4, 0.25)]}
    if reply == "float":
        good["weights"]["fc2.bias"] = good["weights"]["fc2.bias"].double()
    elif reply == "nan":
        good["weights"]["fc2.bias"][0] = float("nan")
    elif reply == "no count":
        good["samples"] = "40"
    elif reply == "wrong losses":
        good["losses"] = [(8, 0.5)]
    else:
        good = reply
    assert says in client_training.reply_problem(good, weights, trained=12)


# --- a train-only data owner, attacked by a coordinator that has the token ------------------------------------

NAMES = itertools.count(1)


@pytest.fixture
def owner(tmp_path, mnist_dir):
    """A real `python -m fl_tutorial.worker --train-only` process, with a name new to this test process."""
    token_file = str(tmp_path / "token")
    security.write_new_token(token_file)
    clients = LocalClients(["trainonly{}".format(next(NAMES))], mnist_dir, token_file, ["--train-only"])
    with clients as (addresses, token):
        yield addresses[0], token, clients


def connect(hook, owner):
    (name, host, port), token, _ = owner
    return websocket_clients.make_client_class()(hook, host, port, name, token=token)


def rule(num_clients=2):
    return {"partition": "iid", "num_clients": num_clients, "seed": 1, "shards_per_client": 2, "dirichlet_alpha": None}


def loaded(hook, owner):
    client = connect(hook, owner)
    reply = client.load_share(rule(), 0)
    assert reply["train_only"] is True and reply["samples"] == 320
    return client


def refusals(owner):
    return [line for line in owner[2].log_tail(owner[2].ids[0], 50) if "refused a message" in line]


def train_request(samples=320, batch_size=64):
    order = torch.randperm(samples).tolist()
    return dict(weights=SimpleCNN().state_dict(),
                passes=[[order[i:i + batch_size] for i in range(0, samples, batch_size)]],
                settings={"lr": 0.05, "dropout": 0.5, "batch_size": batch_size})


def still_serving(hook, owner):
    client = loaded(hook, owner)
    try:
        assert client.fit(client_training.DATASET_KEY, **train_request())["samples"] == 320
    finally:
        client.close()


@pytest.mark.slow
def test_a_train_only_owner_sends_back_only_the_weights_and_the_counts(hook, owner):
    client = loaded(hook, owner)
    request = train_request()
    reply = client.fit(client_training.DATASET_KEY, **request)
    client.close()
    assert set(reply) == {"weights", "samples", "losses"} and reply["losses"] is None and reply["samples"] == 320
    assert client_training.reply_problem(reply, request["weights"], 320) is None
    assert any(not torch.equal(reply["weights"][k], v) for k, v in request["weights"].items()), "it trained"


def syft_messages(sy, client):
    """A real message of every kind that reads or changes what a worker holds, or runs code there."""
    from syft.messaging.message import (
        ForceObjectDeleteMessage,
        GetShapeMessage,
        IsNoneMessage,
        ObjectMessage,
        ObjectRequestMessage,
        PlanCommandMessage,
        SearchMessage,
        TensorCommandMessage,
    )

    some_id = sy.ID_PROVIDER.pop()  # syft ids are random 64-bit numbers; which one does not matter here
    return {
        "SearchMessage": SearchMessage(["#mnist", "#data"]),  # what own_shares sends for the coordinator's pointers
        "ObjectRequestMessage": ObjectRequestMessage(some_id, None, ""),  # .get()
        "GetShapeMessage": GetShapeMessage(some_id),
        "IsNoneMessage": IsNoneMessage(some_id),
        "ForceObjectDeleteMessage": ForceObjectDeleteMessage(some_id),
        "ObjectMessage": ObjectMessage(torch.ones(2)),  # .send()
        "TensorCommandMessage": TensorCommandMessage.computation("torch.nn.functional.relu", None, (),
                                                                  {}, (sy.ID_PROVIDER.pop(),), False),
        "PlanCommandMessage": PlanCommandMessage("fetch_plan", (some_id, False)),
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["SearchMessage", "ObjectRequestMessage", "GetShapeMessage", "IsNoneMessage",
                                  "ForceObjectDeleteMessage", "ObjectMessage", "TensorCommandMessage",
                                  "PlanCommandMessage"])
def test_a_train_only_owner_refuses_every_other_message_and_keeps_serving(sy, hook, owner, kind):
    client = loaded(hook, owner)
    with pytest.raises(ClientError, match="closed the connection"):
        hook.local_worker.send_msg(syft_messages(sy, client)[kind], client)
    client.close()
    (line,) = refusals(owner)
    says = ("a kind of message a train-only data owner does not take: " + kind if kind != "PlanCommandMessage" else
            # any worker refuses a Plan:
            "a message part of a kind this side does not accept: syft.messaging.message.PlanCommandMessage")
    assert re.search(r"\[trainonly\d+\] refused a message from 127\.0\.0\.1:\d+ \({}\); closing the connection$".format(
        re.escape(says)), line), line
    still_serving(hook, owner)


def test_what_a_train_only_owner_takes_is_a_part_of_what_any_worker_takes():
    assert wire.TRAIN_ONLY_MESSAGES < wire.MESSAGES and wire.TRAIN_ONLY_COMMANDS <= wire.COMMANDS
    assert wire.AGGREGATOR_COMMANDS < wire.TRAIN_ONLY_COMMANDS  # an aggregator: shares and sums only


@pytest.mark.slow
@pytest.mark.parametrize("command", ["search", "get_obj", "respond_to_obj_req", "load_data", "set_obj", "_objects"])
def test_a_train_only_owner_runs_no_other_worker_command(hook, owner, command):
    client = loaded(hook, owner)
    with pytest.raises(ClientError, match="closed the connection"):
        client._send_msg_and_deserialize(command, query=["#data"])
    client.close()
    assert "a worker command a train-only data owner does not run: {}".format(command) in refusals(owner)[-1]
    still_serving(hook, owner)


@pytest.mark.slow
@pytest.mark.parametrize("request_change, says", [
    (dict(batch_size=1), "a train-only data owner trains on batches of at least 16 samples, not 1"),
    (dict(single=True), "a batch of 1 samples is neither full (64) nor the last of a whole pass"),
    (dict(key="mnist-test"), "there is no dataset 'mnist-test' here"),
])
def test_a_train_only_owner_trains_on_no_batch_that_singles_out_samples(hook, owner, request_change, says):
    client = loaded(hook, owner)
    request = train_request(batch_size=request_change.get("batch_size", 64))
    if request_change.get("single"):
        request["passes"] = [[[7]]]
    with pytest.raises(ClientError, match=re.escape("did not train: " + says)):
        client.fit(request_change.get("key", client_training.DATASET_KEY), **request)
    client.close()
    still_serving(hook, owner)


@pytest.mark.slow
def test_a_train_only_owner_keeps_no_share_small_enough_to_show_its_labels(hook, owner):
    client = connect(hook, owner)
    try:
        reply = client.load_share(rule(num_clients=64), 0)  # 640 samples: 10 each
    finally:
        client.close()
    assert reply["error"] == "a train-only data owner keeps no share of fewer than 16 samples; this rule gives it 10"


@pytest.mark.slow
def test_training_from_the_coordinator_against_a_train_only_owner_stops_with_one_line(tmp_path, mnist_dir):
    token_file = str(tmp_path / "token")
    security.write_new_token(token_file)
    with LocalClients(["client1", "client2"], mnist_dir, token_file, ["--train-only"]) as (addresses, _):
        connect_flag = ",".join("{}={}:{}".format(*address) for address in addresses)
        result = run_script("--workers", "websocket", "--connect", connect_flag, "--token-file", token_file,
                            "--train-on", "coordinator", "--data-dir", mnist_dir, "--epochs", "1", *FAST)
    assert result.returncode == 1
    assert_clean_exit(result)
    assert result.stderr.strip().splitlines()[-1] == (
        "error: client1 at 127.0.0.1:{} is a train-only data owner (python -m fl_tutorial.worker --train-only): it "
        "trains on its own share and takes no pointer commands. Use --train-on client; the run stops here".format(
            addresses[0][2]))



@pytest.mark.slow
def test_in_a_whole_run_nothing_but_weights_and_counts_leaves_a_train_only_owner(sy, hook, mnist_dir, monkeypatch):
    # Every reply the coordinator receives in a whole FedAvg run (2 rounds, IID) is read and classified.
    client_class = websocket_clients.make_client_class()
    replies = []
    forward = client_class._forward_to_websocket_server_worker

    def recording(self, message):
        reply = forward(self, message)
        replies.append(sy.serde.deserialize(reply, worker=hook.local_worker))
        return reply

    monkeypatch.setattr(client_class, "_forward_to_websocket_server_worker", recording)
    for name in ("client1", "client2"):  # syft would give these workers an earlier test's addresses
        hook.local_worker._known_workers.pop(name, None)
    fl.main(["--workers", "websocket", "--strategy", "fedavg", "--data-dir", mnist_dir, "--epochs", "2", *FAST])
    weights = SimpleCNN().state_dict()
    shares, trained = [], 0
    for reply in replies:
        if isinstance(reply, dict) and "labels" in reply:  # load_share: the counts of the client table
            assert set(reply) == {"samples", "labels", "train_only"} and reply["train_only"] is True
            assert all(isinstance(n, int) for n in reply["labels"]) and sum(reply["labels"]) == reply["samples"]
            shares.append(reply)
        elif isinstance(reply, dict):  # fit: weights and the sample count, no losses
            assert set(reply) == {"weights", "samples", "losses"} and reply["losses"] is None
            assert client_training.reply_problem(reply, weights, 0) is None
            trained += 1
        else:  # _log_msgs and cleanup: syft's empty answers
            assert reply is None or isinstance(reply, bool), reply
    assert len(shares) == 2 and trained == 4


@pytest.mark.slow
def test_an_owner_that_is_not_train_only_trains_on_request_and_tells_its_losses(tmp_path, mnist_dir):
    token_file = str(tmp_path / "token")
    security.write_new_token(token_file)
    metrics = str(tmp_path / "metrics.json")
    with LocalClients(["client1", "client2"], mnist_dir, token_file) as (addresses, _):
        connect_flag = ",".join("{}={}:{}".format(*address) for address in addresses)
        result = run_script("--workers", "websocket", "--connect", connect_flag, "--token-file", token_file,
                            "--strategy", "fedavg", "--train-on", "client", "--data-dir", mnist_dir, "--epochs", "1",
                            "--metrics-out", metrics, "--lr", "0.05", "--log-interval", "1")
    assert result.returncode == 0, result.stderr
    assert_clean_exit(result)
    assert len(re.findall(r"Worker: client\d\tLoss: \d+\.\d{6}$", result.stdout, re.M)) == 10  # 2 x 320 / 64
    with open(metrics) as f:
        assert set(json.load(f)["epochs"][0]["train_loss"]) == {"client1", "client2"}
