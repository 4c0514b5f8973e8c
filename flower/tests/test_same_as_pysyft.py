"""The twin and the PySyft script side by side: same client shares, same clients a round, one model format.

These run the script itself in its own environment (.venv: Python 3.8, torch 1.4,
syft 0.2.6), as `make test` builds it, and the twin in this one.
"""
import json
import os
import subprocess

import pytest
import torch

from fl_tutorial.core import mnist
from flower_twin import task
from twin_helpers import PYSYFT_PYTHON, ROOT, launch

FLAGS = ["--strategy", "fedavg", "--partition", "noniid", "--num-clients", "3", "--seed", "4",
         "--clients-per-round", "2", "--epochs", "3"]


def run_script(*args):
    if not os.path.exists(PYSYFT_PYTHON):
        pytest.fail("the PySyft environment is missing: run `make venv` (make test does)")
    return subprocess.run([PYSYFT_PYTHON, os.path.join(ROOT, "federated_learning.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def script_run(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pysyft")
    paths = {"model": str(out / "model.pt"), "metrics": str(out / "metrics.json")}
    result = run_script(*FLAGS, "--data-dir", mnist_dir, "--lr", "0.05", "--log-interval", "1000",
                        "--save-model", paths["model"], "--metrics-out", paths["metrics"])
    assert result.returncode == 0, result.stderr[-3000:]
    with open(paths["metrics"]) as f:
        return paths["model"], json.load(f)


@pytest.mark.slow
def test_the_same_flags_give_each_client_the_same_samples_and_rounds_on_both_sides(script_run, mnist_dir, tmp_path):
    _, pysyft = script_run
    twin_metrics = str(tmp_path / "twin.json")
    result = launch(*FLAGS, "--data-dir", mnist_dir, "--max-batches", "1", "--metrics-out", twin_metrics)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(twin_metrics) as f:
        flower = json.load(f)
    assert [c["client"] for c in flower["partition"]] == ["client1", "client2", "client3"]
    assert flower["partition"] == pysyft["partition"]  # per client: sample count and the 10 label counts
    assert len({tuple(c["labels"]) for c in flower["partition"]}) == 3  # non-IID: three different mixes
    rounds = [e["clients"] for e in pysyft["epochs"]]
    assert [e["clients"] for e in flower["epochs"]] == rounds and len({tuple(r) for r in rounds}) > 1  # one sampler


def test_a_model_saved_by_the_pysyft_script_loads_into_the_twin_and_tests_the_same(script_run, mnist_dir):
    path, pysyft = script_run
    model = task.SimpleCNN()
    model.load_state_dict(torch.load(path))  # torch 1.4's file, read by torch 2.x, safely (weights only)
    images, labels = mnist.load(mnist_dir, train=False)
    test_loss, accuracy, _ = task.test(model, images, labels, 1000, torch.device("cpu"))
    last = pysyft["epochs"][-1]
    assert accuracy == last["test_accuracy"]
    assert abs(test_loss - last["test_loss"]) < 1e-4
