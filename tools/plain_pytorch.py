"""Plain PyTorch on MNIST, the speed reference of `make compare`: SimpleCNN, SGD, no federation.

Runs in either environment (torch 1.4 in .venv, torch 2.x in .venv-flower), on the
tensors both federated systems use, reshuffled each epoch, and the
test set in batches: the fastest plain loop, not a slowed one. Prints one JSON line.

    python tools/plain_pytorch.py --data-dir DIR [--epochs 1 --lr 0.01 --batch-size 64 --seed 1]
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from fl_tutorial.core import mnist  # noqa: E402
from fl_tutorial.core.model import SimpleCNN  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="./data")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--test-batch-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.1)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    images, labels = mnist.load(args.data_dir)
    test_images, test_labels = mnist.load(args.data_dir, train=False)
    model = SimpleCNN(dropout=args.dropout)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    epochs = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        for begin in range(0, len(order), args.batch_size):
            idx = order[begin:begin + args.batch_size]
            optimizer.zero_grad()
            F.cross_entropy(model(images.index_select(0, idx)), labels.index_select(0, idx)).backward()
            optimizer.step()
        model.eval()
        loss, correct = 0.0, 0
        with torch.no_grad():
            for begin in range(0, len(test_labels), args.test_batch_size):
                output = model(test_images[begin:begin + args.test_batch_size])
                target = test_labels[begin:begin + args.test_batch_size]
                loss += F.cross_entropy(output, target, reduction="sum").item()
                correct += (output.argmax(dim=1) == target).sum().item()
        epochs.append({"test_loss": loss / len(test_labels), "test_accuracy": correct / len(test_labels),
                       "seconds": time.perf_counter() - start})
    print(json.dumps({"torch": torch.__version__, "epochs": epochs}))


if __name__ == "__main__":
    main()
