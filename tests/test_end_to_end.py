"""The script as a student runs it, on small generated data."""
import re

import torch

from conftest import assert_clean_exit, run_script
from federated_learning import SimpleCNN


def test_two_epochs_learn_and_exit_cleanly(mnist_dir, tmp_path):
    model_path = str(tmp_path / "model.pt")
    result = run_script("--epochs", "2", "--lr", "0.05", "--data-dir", mnist_dir,
                        "--log-interval", "3", "--save-model", model_path, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert_clean_exit(result)

    train_lines = re.findall(r"Train Epoch: (\d) \[(\d+)/640 \(\d+%\)\]\tWorker: (client\d)\tLoss: ([\d.]+)", result.stdout)
    assert {(epoch, worker) for epoch, _, worker, _ in train_lines} == {
        ("1", "client1"), ("1", "client2"), ("2", "client1"), ("2", "client2")}
    tests = re.findall(r"Test set: Average loss: ([\d.]+), Accuracy: (\d+)/200 \((\d+)%\)", result.stdout)
    assert len(tests) == 2
    final_loss, final_correct = float(tests[-1][0]), int(tests[-1][1])
    assert final_correct >= 150, result.stdout  # chance is 20/200
    assert final_loss < float(tests[0][0])

    model = SimpleCNN()
    model.load_state_dict(torch.load(model_path))
