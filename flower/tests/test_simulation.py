"""The twin on Flower's simulation engine, end to end: it runs, reports as the script does, and computes FedAvg.

One real run (launcher, SuperLink, `flwr run`, Ray) serves the tests of this file.
"""
import json
import re

import pytest
import torch
import torch.nn.functional as F

from fl_tutorial.core import mnist, partition
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
        updates = []
        for index, share in enumerate(shares):
            model = task.SimpleCNN(dropout=0.0)
            model.load_state_dict(state)
            generator = torch.Generator().manual_seed(task.round_seed(settings.seed, server_round, index))
            dataset = torch.utils.data.TensorDataset(images[torch.from_numpy(share)], labels[torch.from_numpy(share)])
            loader = torch.utils.data.DataLoader(dataset, batch_size=settings.batch_size,
                                                 sampler=torch.utils.data.RandomSampler(dataset, generator=generator))
            optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr)
            for _ in range(settings.local_epochs):
                for data, target in loader:
                    optimizer.zero_grad()
                    F.cross_entropy(model(data), target).backward()
                    optimizer.step()
            updates.append((len(share), model.state_dict()))
        total = sum(n for n, _ in updates)
        state = {key: sum(n / total * update[key] for n, update in updates) for key in state}
    flower = torch.load(paths["model.pt"])
    assert set(flower) == set(state)
    for key in state:
        assert torch.allclose(flower[key], state[key], atol=1e-5, rtol=1e-4), (
            key, (flower[key] - state[key]).abs().max())
