"""The script as a student runs it, on small generated data."""
import re

import pytest
import torch

from fl_tutorial.core.model import SimpleCNN
from helpers import assert_clean_exit, run_script


def test_two_epochs_learn_and_exit_cleanly(mnist_dir, tmp_path):
    model_path = str(tmp_path / "model.pt")
    result = run_script("--epochs", "2", "--lr", "0.05", "--data-dir", mnist_dir,
                        "--log-interval", "3", "--save-model", model_path, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert_clean_exit(result)

    train_lines = re.findall(r"Train Epoch: (\d) \[(\d+)/640 \(\d+%\)\]\tWorker: (client\d)\tLoss: ([\d.]+)",
                             result.stdout)
    assert {(epoch, worker) for epoch, _, worker, _ in train_lines} == {
        ("1", "client1"), ("1", "client2"), ("2", "client1"), ("2", "client2")}
    tests = re.findall(r"Test set: Average loss: ([\d.]+), Accuracy: (\d+)/200 \((\d+)%\)", result.stdout)
    assert len(tests) == 2
    final_loss, final_correct = float(tests[-1][0]), int(tests[-1][1])
    assert final_correct >= 150, result.stdout  # chance is 20/200
    assert final_loss < float(tests[0][0])

    model = SimpleCNN()
    model.load_state_dict(torch.load(model_path))


def test_default_loop_gives_the_same_weights_as_the_course_loop(mnist_dir, tmp_path):
    """--sync per-visit (default: fewer trips, one-slice batches, bulk transform) vs the course's loop."""
    runs = {}
    for sync in ("every-batch", "per-visit"):
        path = str(tmp_path / (sync + ".pt"))
        result = run_script("--epochs", "2", "--lr", "0.05", "--seed", "7", "--data-dir", mnist_dir,
                            "--sync", sync, "--save-model", path, "--device", "cpu")
        assert result.returncode == 0, result.stderr
        assert_clean_exit(result)
        runs[sync] = (torch.load(path), re.findall(r"Test set: .*", result.stdout))
    (course, course_tests), (fast, fast_tests) = runs["every-batch"], runs["per-visit"]
    assert fast_tests == course_tests and len(fast_tests) == 2
    for name in course:
        assert torch.allclose(fast[name], course[name], rtol=1e-5, atol=1e-6), name


@pytest.mark.slow
def test_max_batches_stops_each_epoch_early(mnist_dir):
    result = run_script("--epochs", "2", "--max-batches", "3", "--log-interval", "1", "--data-dir", mnist_dir)
    assert result.returncode == 0, result.stderr
    assert len(re.findall(r"Train Epoch: 1 ", result.stdout)) == 3
    assert len(re.findall(r"Train Epoch: 2 ", result.stdout)) == 3
