"""The FedAvg paper's experiments: client sampling, FedSGD, rounds to a target, FedProx, virtual data owners.

FedSGD is checked against one step of large-batch SGD in plain PyTorch, FedProx
against its definition (the proximal term in the loss, differentiated by
autograd), and training on virtual data owners against the course's
pointer-by-pointer loop, with sampling and FedProx on.
"""
import copy
import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import federated_learning as fl
from fl_tutorial.core import mnist, partition, report, sampling
from fl_tutorial.core.model import SimpleCNN
from fl_tutorial.experiment import owners, preflight
from fl_tutorial.experiment.fedavg import FedAvg
from fl_tutorial.privacy.aggregation import ServerAverage
from fl_tutorial.pysyft import client_training, virtual_owners
from fl_tutorial.pysyft.owners import link_to_server
from helpers import CPU, FAST, args_for, assert_clean_exit, assert_usage_error, run_script, saved

# --- client sampling ---------------------------------------------------------------------------------------

def test_sampling_is_reproducible_distinct_ordered_and_leaves_torch_alone():
    names = partition.client_names(10)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    draws = [sampling.ClientSampler(names, 3, seed=7) for _ in range(2)]
    rounds = [[d.next_round() for _ in range(50)] for d in draws]
    assert rounds[0] == rounds[1], "the same seed draws the same clients"
    other = sampling.ClientSampler(names, 3, seed=8)
    assert [other.next_round() for _ in range(50)] != rounds[0], "another seed draws others"
    for chosen in rounds[0]:
        assert len(set(chosen)) == 3 and chosen == sorted(chosen, key=names.index)
    assert torch.equal(torch.get_rng_state(), before)
    assert sampling.ClientSampler(names, None).next_round() == names


def test_sampling_is_uniform():
    # 4,000 rounds of 3 of 10: each client is drawn 1,200 times on average, with standard
    # deviation sqrt(4000 * 0.3 * 0.7) = 29; 5 of them (145) is the tolerance.
    sampler = sampling.ClientSampler(list(range(10)), 3, seed=1)
    counts = np.zeros(10)
    pairs = np.zeros((10, 10))
    for _ in range(4000):
        chosen = sampler.next_round()
        counts[chosen] += 1
        for a in chosen:
            pairs[a, chosen] += 1
    assert np.all(np.abs(counts - 1200) < 145), counts
    # each pair of clients meets as often as any other: 4000 * 3/10 * 2/9 = 267 rounds (sd ~15)
    off_diagonal = pairs[~np.eye(10, dtype=bool)]
    assert np.all(np.abs(off_diagonal - 4000 * 3 / 10 * 2 / 9) < 75), off_diagonal


@pytest.mark.slow
@pytest.mark.parametrize("flags", [
    ["--aggregation", "secure"],
    ["--train-on", "client", "--prox-mu", "0.5", "--partition", "noniid"],
], ids=["secure", "virtual-owners-fedprox-noniid"])
def test_a_sampled_run_records_its_clients_and_only_they_train(mnist_dir, tmp_path, flags):
    metrics = str(tmp_path / "m.json")
    result = run_script("--strategy", "fedavg", "--num-clients", "4", "--clients-per-round", "2", "--epochs", "3",
                        "--data-dir", mnist_dir, "--metrics-out", metrics, "--seed", "3", *FAST, *flags)
    assert result.returncode == 0, result.stderr
    assert_clean_exit(result)
    rounds = json.load(open(metrics))["epochs"]
    expected = sampling.ClientSampler(partition.client_names(4), 2, seed=3)
    for record in rounds:
        assert record["clients"] == expected.next_round()
        assert sorted(record["train_loss"]) == record["clients"]
    assert len({tuple(r["clients"]) for r in rounds}) > 1


# --- training on virtual data owners, with sampling and FedProx ---------------------------------------------

@pytest.mark.parametrize("flags", [
    pytest.param(["--num-clients", "4", "--clients-per-round", "2", "--partition", "noniid", "--prox-mu", "0.5",
                  "--local-epochs", "2"], id="sampled-fedprox-noniid"),
    pytest.param(["--num-clients", "3", "--batch-size", "full", "--local-epochs", "3"], id="full-batch",
                 marks=pytest.mark.slow),
])
def test_virtual_data_owners_end_with_the_weights_of_the_course_loop(mnist_dir, tmp_path, flags):
    # dropout 0: the loop through pointers and the owners' own loop draw no random numbers of their own.
    for where in ("coordinator", "client"):
        result = run_script("--strategy", "fedavg", "--train-on", where, "--data-dir", mnist_dir, "--epochs", "2",
                            "--dropout", "0", "--save-model", str(tmp_path / where), *FAST, *flags)
        assert result.returncode == 0, result.stderr
        assert_clean_exit(result)
    coordinator, client = saved(tmp_path / "coordinator"), saved(tmp_path / "client")
    for name in coordinator:
        assert torch.allclose(coordinator[name], client[name], rtol=0, atol=1e-5), name


@pytest.fixture
def data_owners(sy, hook):
    """Three virtual data owners with names of their own (syft keys workers by id); forgotten afterwards."""
    made = []

    def make(train_on_client):
        cls = virtual_owners.make_owner_class(sy) if train_on_client else sy.VirtualWorker
        workers = link_to_server(hook, [cls(hook, id="paper{}-{}".format(len(made), i), auto_add=False)
                                        for i in range(1, 4)])
        made.extend(workers)
        return workers

    yield make
    for worker in made:
        worker.clear_objects()
        hook.local_worker._known_workers.pop(worker.id, None)


@pytest.mark.parametrize("train_on", ["coordinator", "client"])
def test_fedsgd_is_one_step_of_large_batch_sgd_on_the_sampled_clients(sy, mnist_dir, data_owners, train_on):
    args = args_for(mnist_dir, "--strategy", "fedavg", "--batch-size", "full", "--num-clients", "3",
                    "--clients-per-round", "2", "--dropout", "0", "--train-on", train_on, "--seed", "4")
    workers = data_owners(train_on == "client")
    federated, clients = owners.shares(args, workers, fl.federated_mnist)
    batch_size = preflight.train_batch(args, max(c["samples"] for c in clients))
    loader = sy.FederatedDataLoader(federated, batch_size=batch_size, shuffle=True)
    model = SimpleCNN(dropout=0.0)
    start = copy.deepcopy(model.state_dict())
    chosen = sampling.ClientSampler([w.id for w in workers], 2, seed=4).next_round()
    progress = report.Progress("Round", 1, 1, 1000, stream=io.StringIO())
    FedAvg(args, ServerAverage(), fl.train_steps, CPU, batch_size).round(model, loader, progress, chosen)

    images, labels = mnist.normalized(mnist_dir)
    shares = partition.split(labels.numpy(), args.rule)
    union = torch.from_numpy(np.concatenate([shares[[w.id for w in workers].index(c)] for c in chosen]))
    plain = SimpleCNN(dropout=0.0)
    plain.load_state_dict(start)
    optimizer = torch.optim.SGD(plain.parameters(), lr=args.lr)
    F.cross_entropy(plain(images[union]), labels[union]).backward()  # the mean over both clients' samples
    optimizer.step()
    assert len(union) > max(len(s) for s in shares)
    for name, tensor in plain.state_dict().items():
        assert torch.allclose(model.state_dict()[name], tensor, rtol=0, atol=1e-6), name


# --- FedProx ------------------------------------------------------------------------------------------------

def _fit(prox_mu, data, targets, start, passes):
    settings = {"lr": 0.1, "dropout": 0.0, "batch_size": 8, "prox_mu": prox_mu}
    return client_training.fit(data, targets, start, passes, settings, train_only=False)["weights"]


def test_fedprox_is_the_proximal_term_in_the_loss_and_mu_0_is_fedavg_to_the_bit():
    torch.manual_seed(0)
    data, targets = torch.randn(40, 1, 28, 28), torch.randint(0, 10, (40,))
    start = SimpleCNN(dropout=0.0).state_dict()
    passes = [[list(range(0, 8)), list(range(8, 16)), list(range(16, 24))], [list(range(24, 32))]]
    batches = [b for one_pass in passes for b in one_pass]

    def by_definition(mu):  # torch's SGD on cross-entropy + (mu/2)·||w - w_start||², autograd's gradient
        model = SimpleCNN(dropout=0.0)
        model.load_state_dict(start)
        anchors = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for batch in batches:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(data[batch]), targets[batch])
            if mu:
                loss = loss + mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchors))
            loss.backward()
            optimizer.step()
        return model.state_dict()

    fedavg, prox = _fit(0.0, data, targets, start, passes), _fit(1.0, data, targets, start, passes)
    for name, tensor in by_definition(0.0).items():
        assert torch.equal(fedavg[name], tensor), name
    expected = by_definition(1.0)
    for name in expected:
        assert torch.allclose(prox[name], expected[name], rtol=0, atol=1e-6), name
    # the pull towards the start: every layer ends nearer to it than FedAvg's
    for name in start:
        assert (prox[name] - start[name]).norm() < (fedavg[name] - start[name]).norm(), name


@pytest.mark.slow
def test_fedprox_with_mu_0_gives_fedavgs_weights_in_the_script(mnist_dir, tmp_path):
    for name, flags in (("fedavg", []), ("fedprox0", ["--prox-mu", "0"]), ("fedprox", ["--prox-mu", "0.5"])):
        result = run_script("--strategy", "fedavg", "--epochs", "1", "--data-dir", mnist_dir, "--max-batches", "6",
                            "--save-model", str(tmp_path / name), *FAST, *flags)
        assert result.returncode == 0, result.stderr
    fedavg, fedprox0, fedprox = (saved(tmp_path / n) for n in ("fedavg", "fedprox0", "fedprox"))
    assert all(torch.equal(fedavg[n], fedprox0[n]) for n in fedavg)
    assert not all(torch.equal(fedavg[n], fedprox[n]) for n in fedavg)


# --- rounds to a target -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_stops_at_the_first_round_that_reaches_the_target(mnist_dir, tmp_path):
    metrics, plot = str(tmp_path / "m.json"), str(tmp_path / "m.png")
    result = run_script("--strategy", "fedavg", "--epochs", "6", "--target-accuracy", "0.2", "--data-dir",
                        mnist_dir, "--metrics-out", metrics, "--plot", plot, *FAST)
    assert result.returncode == 0, result.stderr
    data = json.load(open(metrics))
    tested = [e["test_accuracy"] for e in data["epochs"]]
    assert tested[-1] >= 0.2 and all(a < 0.2 for a in tested[:-1]) and len(tested) < 6
    target = data["target"]
    assert target["reached_at"] == len(tested) and target["accuracy"] == 0.2
    assert "Target reached: 20.00% test accuracy after round {} (".format(len(tested)) in result.stdout
    assert open(plot, "rb").read(4) == b"\x89PNG"


@pytest.mark.slow
def test_a_run_that_misses_the_target_says_what_it_reached_and_tests_every_k_rounds(mnist_dir, tmp_path):
    metrics = str(tmp_path / "m.json")
    result = run_script("--strategy", "fedavg", "--epochs", "3", "--test-every", "2", "--target-accuracy", "1",
                        "--data-dir", mnist_dir, "--metrics-out", metrics, "--max-batches", "2", *FAST)
    assert result.returncode == 0, result.stderr
    data = json.load(open(metrics))
    assert [("test_accuracy" in e) for e in data["epochs"]] == [False, True, True]  # round 2, and the last
    assert result.stdout.count("Test set:") == 2
    best = data["target"]["best_accuracy"]
    assert data["target"]["reached_at"] is None and best == max(e["test_accuracy"] for e in data["epochs"][1:])
    assert "Target not reached: 100.00% in 3 rounds; the best was {:.2f}% after round {}.".format(
        100 * best, data["target"]["best_at"]) in result.stdout


# --- what cannot work ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, complaint", [
    (["--clients-per-round", "2"], "--clients-per-round needs --strategy fedavg"),
    (["--prox-mu", "0.1"], "--prox-mu needs --strategy fedavg"),
    (["--batch-size", "full"], "--batch-size full needs --strategy fedavg"),
    (["--strategy", "fedavg", "--clients-per-round", "3"], "--clients-per-round 3: there are only 2 clients"),
    (["--strategy", "fedavg", "--clients-per-round", "0"], "--clients-per-round: must be >= 1"),
    (["--strategy", "fedavg", "--num-clients", "4", "--clients-per-round", "1", "--aggregation", "secure"],
     "--aggregation secure needs at least 2 clients a round"),
    (["--strategy", "fedavg", "--train-on", "client", "--aggregation", "trusted"],
     "--aggregation trusted with VirtualWorkers keeps the copies on the clients, but with --train-on client"),
    (["--strategy", "fedavg", "--prox-mu", "-1"], "--prox-mu: must be >= 0.0"),
    (["--target-accuracy", "99"], "--target-accuracy: must be at most 1 (a fraction: 0.99 is 99%), got 99"),
    (["--target-accuracy", "0"], "--target-accuracy: must be > 0.0"),
    (["--test-every", "0"], "--test-every: must be >= 1"),
    (["--batch-size", "all"], "--batch-size: 'all' is not an integer"),
])
def test_flags_of_the_paper_that_cannot_work_are_usage_errors(capsys, argv, complaint):
    assert_usage_error(capsys, argv, complaint)
