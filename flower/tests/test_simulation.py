"""The twin on Flower's simulation engine, end to end: it runs, reports as the script does, and computes FedAvg.

One real run (launcher, SuperLink, `flwr run`, Ray) serves the tests of this file.
"""
import json
import re

import pytest
import torch
import torch.nn.functional as F

from fl_tutorial.core import mnist, partition, sampling
from flower_twin import config, task
from twin_helpers import launch

FLAGS = ["--num-clients", "2", "--partition", "noniid", "--dirichlet-alpha", "0.5", "--dropout", "0",
         "--local-epochs", "2", "--epochs", "2", "--lr", "0.05", "--seed", "3"]
TEST_LINE = re.compile(r"^Test set: Average loss: \d+\.\d{4}, Accuracy: (\d+)/200 \(\d+%\)$", re.M)


@pytest.fixture(scope="module")
def run(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    paths = {name: str(out / name) for name in ("model.pt", "metrics.json", "plot.png")}
    result = launch("--data-dir", mnist_dir, *FLAGS, "--save-model", paths["model.pt"],
                    "--metrics-out", paths["metrics.json"], "--plot", paths["plot.png"])
    return result, paths


def test_a_simulated_run_ends_well_and_prints_the_scripts_lines(run):
    result, paths = run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert re.search(r"^client    samples       0     1", result.stdout, re.M)  # the script's client table
    assert len(TEST_LINE.findall(result.stdout)) == 2  # one test per round, on the server
    assert re.search(r"^Flower run \d+: finished:completed in \d+\.\d s$", result.stdout, re.M)
    assert "Saved the model to {}".format(paths["model.pt"]) in result.stdout


def test_the_metrics_file_and_plot_are_the_scripts(run, mnist_dir):
    result, paths = run
    with open(paths["metrics.json"]) as f:
        metrics = json.load(f)
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    last = metrics["epochs"][-1]
    assert set(last) >= {"train_loss", "test_loss", "test_accuracy", "test_accuracy_per_class", "seconds"}
    assert set(last["train_loss"]) == {"client1", "client2"}
    accuracies = [int(a) / 200 for a in TEST_LINE.findall(result.stdout)]
    assert [e["test_accuracy"] for e in metrics["epochs"]] == accuracies
    assert last["test_accuracy"] >= 0.6  # it learns (chance is 10 %)
    config_ = metrics["config"]
    assert (config_["strategy"], config_["num_clients"], config_["epochs"], config_["system"]) == (
        "fedavg", 2, 2, "flower")
    labels = mnist.load(mnist_dir)[1].numpy()
    rule = config.settings(dict(config.defaults(), **{"partition": "noniid", "dirichlet-alpha": 0.5, "seed": 3})).rule()
    assert metrics["partition"] == partition.describe(labels, partition.split(labels, rule), ["client1", "client2"])
    assert metrics["run"]["engine"] == "simulation" and metrics["run"]["status"] == "finished:completed"
    with open(paths["plot.png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def plain_round(state: dict, images: torch.Tensor, labels: torch.Tensor, shares: dict, settings: config.Settings,
                server_round: int, prox_mu: float = 0.0) -> dict:
    """One FedAvg (or FedProx) round in plain PyTorch: each client of `shares` (index -> sample indexes) trains a
    copy of `state` on the same batches (torch's DataLoader and RandomSampler, the round's seed); the result is
    their sample-weighted average. FedProx's term is in the loss, for autograd to differentiate."""
    updates = []
    for index, share in shares.items():
        model = task.SimpleCNN(dropout=0.0)
        model.load_state_dict(state)
        anchors = [p.detach().clone() for p in model.parameters()]
        generator = torch.Generator().manual_seed(task.round_seed(settings.seed, server_round, index))
        dataset = torch.utils.data.TensorDataset(images[torch.from_numpy(share)], labels[torch.from_numpy(share)])
        loader = torch.utils.data.DataLoader(dataset, batch_size=settings.batch_size,
                                             sampler=torch.utils.data.RandomSampler(dataset, generator=generator))
        optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr)
        for _ in range(settings.local_epochs):
            for data, target in loader:
                optimizer.zero_grad()
                loss = F.cross_entropy(model(data), target)
                proximal = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchors, strict=True))
                (loss + prox_mu / 2 * proximal).backward()
                optimizer.step()
        updates.append((len(share), model.state_dict()))
    total = sum(n for n, _ in updates)
    return {key: sum(n / total * update[key] for n, update in updates) for key in state}


def assert_same_weights(path: str, state: dict) -> None:
    flower = torch.load(path)
    assert set(flower) == set(state)
    for key in state:
        assert torch.allclose(flower[key], state[key], atol=1e-5, rtol=1e-4), (
            key, (flower[key] - state[key]).abs().max())


def test_a_round_is_plain_fedavg_over_plain_pytorch_clients(run, mnist_dir):
    """The global weights equal the sample-weighted average of client models that plain PyTorch trains

    from the same start on the same batches (torch's DataLoader and RandomSampler, the round's seed)."""
    result, paths = run
    settings = config.settings(dict(config.defaults(), **{
        "partition": "noniid", "dirichlet-alpha": 0.5, "dropout": 0.0, "local-epochs": 2, "num-server-rounds": 2,
        "lr": 0.05, "seed": 3}))
    images, labels = mnist.load(mnist_dir)
    shares = partition.split(labels.numpy(), settings.rule())
    assert len(shares[0]) != len(shares[1])  # unequal shares: the weighting matters
    torch.manual_seed(settings.seed)
    state = task.SimpleCNN(dropout=0.0).state_dict()  # the server's initial model
    for server_round in (1, 2):
        state = plain_round(state, images, labels, dict(enumerate(shares)), settings, server_round)
    assert_same_weights(paths["model.pt"], state)


# The FedAvg paper's settings: 2 of 4 clients a round, drawn by the script's sampler; FedProx; a test every 2
# rounds, and a target that round 2 reaches, so that round 3 never runs.
PAPER = {"num-clients": 4, "clients-per-round": 2, "num-server-rounds": 3, "test-every": 2, "target-accuracy": 0.05,
         "prox-mu": 0.5, "local-epochs": 2, "dropout": 0.0, "lr": 0.05, "seed": 3}


@pytest.fixture(scope="module")
def paper_run(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("paper")
    paths = {name: str(out / name) for name in ("model.pt", "metrics.json")}
    flags = [arg for key, value in PAPER.items()
             for arg in ("--epochs" if key == "num-server-rounds" else f"--{key}", str(value))]
    result = launch("--data-dir", mnist_dir, *flags, "--save-model", paths["model.pt"],
                    "--metrics-out", paths["metrics.json"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(paths["metrics.json"]) as f:
        return result, paths, json.load(f)


def test_the_papers_rounds_draw_the_scripts_clients_test_every_k_and_stop_at_the_target(paper_run):
    result, _, metrics = paper_run
    draws = sampling.ClientSampler(partition.client_names(4), 2, seed=3)
    expected = [draws.next_round() for _ in (1, 2)]
    assert [e["clients"] for e in metrics["epochs"]] == expected  # round 3 never ran
    assert [sorted(e["train_loss"]) for e in metrics["epochs"]] == expected
    assert ["test_accuracy" in e for e in metrics["epochs"]] == [False, True]
    assert len(TEST_LINE.findall(result.stdout)) == 1
    assert metrics["target"]["reached_at"] == 2
    assert re.search(r"^Target reached: 5\.00% test accuracy after round 2 \(\d+ s of training and testing\)\.$",
                     result.stdout, re.M)
    assert (metrics["config"]["clients_per_round"], metrics["config"]["prox_mu"]) == (2, 0.5)


def test_fedprox_on_the_twin_is_flowers_strategy_with_the_proximal_term_on_the_clients(paper_run, mnist_dir):
    _, paths, metrics = paper_run
    settings = config.settings(dict(config.defaults(), **PAPER))
    images, labels = mnist.load(mnist_dir)
    shares = partition.split(labels.numpy(), settings.rule())
    torch.manual_seed(settings.seed)
    state = task.SimpleCNN(dropout=0.0).state_dict()
    for record in metrics["epochs"]:
        chosen = {int(name[len("client"):]) - 1: shares[int(name[len("client"):]) - 1] for name in record["clients"]}
        state = plain_round(state, images, labels, chosen, settings, record["epoch"], prox_mu=settings.prox_mu)
    assert_same_weights(paths["model.pt"], state)
    without = plain_round(state, images, labels, {0: shares[0]}, settings, 3)
    with_prox = plain_round(state, images, labels, {0: shares[0]}, settings, 3, prox_mu=settings.prox_mu)
    assert not torch.allclose(without["fc2.weight"], with_prox["fc2.weight"], atol=1e-5)  # the term matters
