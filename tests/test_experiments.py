"""Coursework experiments: N clients, non-IID splits, FedAvg, metrics, plots, progress."""
import json
import os
import pty
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import federated_learning as fl
from fl_tutorial.core import mnist, partition, report
from fl_tutorial.core.model import SimpleCNN
from fl_tutorial.experiment import owners
from fl_tutorial.privacy import aggregation
from helpers import (
    SCRIPT,
    Recorder,
    args_for,
    assert_clean_exit,
    assert_usage_error,
    peek,
    replay_in_plain_pytorch,
    run_script,
    synthetic_digits,
    train_epochs,
)

LABELS = synthetic_digits(640, 0)[1].astype(np.int64)


def assert_disjoint_and_complete(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == n and len(np.unique(joined)) == n


@pytest.mark.parametrize("make", [
    lambda seed: partition.like_federate(640, 3),
    lambda seed: partition.shards(LABELS, 5, 2, seed),
    lambda seed: partition.shards(LABELS, 3, 7, seed),
    lambda seed: partition.dirichlet(LABELS, 4, 0.5, seed),
    lambda seed: partition.dirichlet(LABELS, 10, 100.0, seed),
])
def test_partitions_are_disjoint_complete_and_deterministic(make):
    parts = make(1)
    assert_disjoint_and_complete(parts, 640)
    assert all(len(p) > 0 for p in parts)
    assert all(np.array_equal(a, b) for a, b in zip(parts, make(1)))


def test_seeds_change_the_noniid_splits():
    for make in (lambda s: partition.shards(LABELS, 5, 2, s), lambda s: partition.dirichlet(LABELS, 4, 0.5, s)):
        assert not all(np.array_equal(a, b) for a, b in zip(make(1), make(2)))


def test_shards_give_each_client_few_labels():
    # 640 samples, 64 per label; 10 shards of 64 -> each client holds 2 shards, so at most 4 labels.
    for part in partition.shards(LABELS, 5, 2, seed=0):
        assert len(np.unique(LABELS[part])) <= 4 and len(part) == 128


def test_small_dirichlet_alpha_skews_labels_large_alpha_does_not():
    def top_label_share(alpha):
        parts = partition.dirichlet(LABELS, 4, alpha, seed=0)
        return np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts])
    assert top_label_share(0.05) > 0.5 > 0.2 > top_label_share(1000.0)


def test_describe_counts_labels_per_client():
    parts = partition.shards(LABELS, 2, 2, seed=0)
    rows = partition.describe(LABELS, parts, ["client1", "client2"])
    assert [r["client"] for r in rows] == ["client1", "client2"]
    assert sum(r["samples"] for r in rows) == 640
    assert np.sum([r["labels"] for r in rows], axis=0).tolist() == np.bincount(LABELS).tolist()


@pytest.mark.parametrize("flags", [["--partition", "iid"], ["--partition", "noniid"],
                                   ["--partition", "noniid", "--dirichlet-alpha", "0.3"]])
def test_remote_data_matches_the_described_partition(sy, mnist_dir, workers, flags):
    mnist.ensure(mnist_dir)
    args = args_for(mnist_dir, *flags)
    federated, clients = owners.shares(args, tuple(workers), fl.federated_mnist)
    images, labels = mnist.normalized(mnist_dir)
    shares = partition.split(labels.numpy(), args.rule)
    assert clients == partition.describe(labels.numpy(), shares, [w.id for w in workers])
    for worker, share in zip(workers, shares):
        dataset = federated[worker.id]
        assert torch.equal(peek(dataset.targets), labels[share])
        assert torch.equal(peek(dataset.data), images[share])


def test_federated_average_weights_by_samples():
    a, b = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([4.0, 8.0])}
    assert torch.allclose(aggregation.weighted_average([(1, a), (3, b)])["w"], torch.tensor([3.25, 6.5]))
    assert torch.equal(aggregation.weighted_average([(7, a)])["w"], a["w"])


def test_fedavg_with_one_client_and_one_local_epoch_equals_plain_training(sy, mnist_dir, session_workers):
    mnist.ensure(mnist_dir)
    torch.manual_seed(0)
    model = SimpleCNN()
    recorder = Recorder(model)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    args = args_for(mnist_dir, "--strategy", "fedavg", "--num-clients", "1", "--local-epochs", "1")
    train_epochs(sy, args, model, session_workers[:1], epochs=2, recorder=recorder)

    assert recorder.visits == ["client1", "client1"] and len(recorder.batches) == 20
    for name, value in replay_in_plain_pytorch(start, recorder.batches).items():
        assert not torch.equal(value, start[name]), name + " did not train"
        assert torch.allclose(model.state_dict()[name], value, rtol=1e-5, atol=1e-6), name
    for worker in session_workers:
        worker.clear_objects()


def test_fedavg_local_epochs_repeat_each_clients_data(sy, mnist_dir, workers):
    mnist.ensure(mnist_dir)
    model = SimpleCNN()
    recorder = Recorder(model)
    train_epochs(sy, args_for(mnist_dir, "--strategy", "fedavg", "--local-epochs", "2"), model, workers, epochs=1,
                 recorder=recorder)
    assert recorder.visits == ["client1", "client2"]
    assert [b[0] for b in recorder.batches] == ["client1"] * 10 + ["client2"] * 10


@pytest.mark.slow
def test_run_with_five_noniid_clients_fedavg_metrics_and_plot(mnist_dir, tmp_path):
    metrics_path, plot_path = str(tmp_path / "m.json"), str(tmp_path / "curves.png")
    result = run_script("--epochs", "2", "--lr", "0.05", "--data-dir", mnist_dir, "--num-clients", "5",
                        "--partition", "noniid", "--strategy", "fedavg", "--metrics-out", metrics_path,
                        "--plot", plot_path, "--log-interval", "1")
    assert result.returncode == 0, result.stderr
    assert_clean_exit(result)
    assert "Train Round: 1" in result.stdout and "Worker: client5" in result.stdout
    header, *rows = result.stdout.split("\n\n")[0].splitlines()
    assert header.split()[:2] == ["client", "samples"] and len(rows) == 5

    metrics = json.load(open(metrics_path))
    assert metrics["config"]["num_clients"] == 5 and metrics["config"]["strategy"] == "fedavg"
    assert [c["client"] for c in metrics["partition"]] == partition.client_names(5)
    assert sum(c["samples"] for c in metrics["partition"]) == 640
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    for epoch in metrics["epochs"]:
        assert sorted(epoch["train_loss"]) == partition.client_names(5)
        assert len(epoch["test_accuracy_per_class"]) == 10 and epoch["seconds"] > 0
        assert 0 <= epoch["test_accuracy"] <= 1 and epoch["test_loss"] > 0
    printed = [float(x) for x in __import__("re").findall(r"Average loss: ([\d.]+)", result.stdout)]
    assert printed == [pytest.approx(e["test_loss"], abs=1e-4) for e in metrics["epochs"]]

    with open(plot_path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image
    height, width = matplotlib.image.imread(plot_path).shape[:2]
    assert (width, height) == (1800, 480)


def history(epochs, clients=("client1", "client2")):
    return {"config": {"num_clients": len(clients), "partition": "iid", "strategy": "sequential", "lr": 0.01},
            "partition": [{"client": c} for c in clients],
            "epochs": [{"epoch": e, "test_loss": 1.0 / e, "test_accuracy": 0.5 + e / 100,
                        "train_loss": {c: 2.0 / (e + i) for i, c in enumerate(clients)}} for e in range(1, epochs + 1)]}


@pytest.mark.parametrize("epochs", [1, 3, 12])
def test_plot_ticks_epochs_as_whole_numbers(epochs):
    fig = report.figure(history(epochs))
    for ax in fig.axes:
        fig.canvas.draw()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        labels = [label.get_text() for label in ax.get_xticklabels() if label.get_text()]
        assert all("." not in text for text in labels), labels


def test_plot_shows_each_clients_training_loss():
    fig = report.figure(history(3, clients=("client1", "client2", "client3")))
    train_ax = fig.axes[2]
    assert train_ax.get_title() == "Training loss per client"
    lines = {line.get_label(): list(line.get_ydata()) for line in train_ax.get_lines()}
    assert sorted(lines) == ["client1", "client2", "client3"]
    assert lines["client2"] == pytest.approx([2.0 / 2, 2.0 / 3, 2.0 / 4])


@pytest.mark.slow
def test_metrics_file_stays_valid_when_the_run_is_killed(mnist_dir, tmp_path):
    metrics_path = str(tmp_path / "m.json")
    process = subprocess.Popen([sys.executable, SCRIPT, "--epochs", "50", "--data-dir", mnist_dir,
                                "--metrics-out", metrics_path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not os.path.exists(metrics_path) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # let it get into the middle of a later epoch
    finally:
        process.kill()
        process.wait()
    metrics = json.load(open(metrics_path))  # complete JSON, whatever moment the kill came
    assert len(metrics["epochs"]) >= 1 and metrics["epochs"][0]["epoch"] == 1
    # SIGKILL between writing the next version and renaming it over m.json leaves that temporary file; nothing else
    leftovers = [f for f in os.listdir(str(tmp_path)) if f != "m.json"]
    assert len(leftovers) <= 1 and all(f.startswith("m.json.") and f.endswith(".part") for f in leftovers), leftovers


@pytest.mark.slow
def test_a_terminal_gets_a_progress_bar_instead_of_log_lines(mnist_dir):
    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, SCRIPT, "--data-dir", mnist_dir, "--max-batches", "4"],
                               stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert process.wait() == 0
    text = output.decode(errors="replace")
    assert "Epoch 1:" in text and "img" in text and "worker=client" in text and "loss=" in text
    assert "Train Epoch" not in text and "Test set: Average loss" in text


@pytest.mark.parametrize("argv, complaint", [
    (["--num-clients", "0"], "--num-clients: must be >= 1, got 0"),
    (["--partition", "noniid", "--dirichlet-alpha", "0"], "--dirichlet-alpha: must be > 0.0, got 0"),
    (["--partition", "noniid", "--dirichlet-alpha", "-1"], "--dirichlet-alpha: must be > 0.0"),
    (["--partition", "noniid", "--shards-per-client", "0"], "--shards-per-client: must be >= 1"),
    (["--strategy", "fedavg", "--local-epochs", "0"], "--local-epochs: must be >= 1, got 0"),
    (["--shards-per-client", "3"], "need --partition noniid"),
    (["--partition", "noniid", "--shards-per-client", "2", "--dirichlet-alpha", "1"], "choose one of"),
    (["--local-epochs", "2"], "--local-epochs needs --strategy fedavg"),
    (["--sync", "every-batch", "--strategy", "fedavg"], "--sync every-batch is the course's loop"),
    (["--partition", "bananas"], "--partition: invalid choice"),
])
def test_bad_experiment_flags_are_usage_errors(argv, complaint, capsys):
    assert_usage_error(capsys, argv, complaint)


@pytest.mark.slow
@pytest.mark.parametrize("flags, complaint", [
    (["--num-clients", "641"], "--num-clients 641: more clients than the 640 training samples"),
    (["--num-clients", "641", "--partition", "noniid", "--dirichlet-alpha", "1"], "more clients than the 640"),
    (["--partition", "noniid", "--shards-per-client", "400"], "--shards-per-client 400: 2 clients x 400 shards"),
    (["--num-clients", "300"], ".federate() splits 640 samples into chunks of 3"),
])
def test_flags_that_do_not_fit_the_data_are_usage_errors(mnist_dir, flags, complaint):
    result = run_script("--data-dir", mnist_dir, *flags)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: ") and complaint in result.stderr
    assert_clean_exit(result)
