"""Federated learning on MNIST with PySyft 0.2.x.

This is the PyTorch MNIST example with the changes that make it federated,
each marked "<-- federated". It reads top to bottom as the course's six steps:
  1. create the data owners        4. send a model copy to a client
  2. send the data to the clients  5. bring the updated model back
  3. build the model               6. train and test

Run it with:  python federated_learning.py --epochs 1 --lr 0.01
"""
import argparse
import sys

from fl_tutorial.env import import_syft, pick_device

sy = import_syft()  # <-- federated: checks Python 3.8, torch 1.4.0, syft 0.2.6 first

import torch  # noqa: E402  (after the check, so a wrong stack gets a message, not a traceback)
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torch.optim as optim  # noqa: E402
from torchvision import datasets  # noqa: E402

from fl_tutorial import mnist  # noqa: E402
from fl_tutorial.cli import positive_float, positive_int  # noqa: E402


class SimpleCNN(nn.Module):
    """Two conv blocks and three dense layers; returns logits (1,715,594 parameters)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(64, 128, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()  # works on pointers; x.view(x.size(0), -1) does not
        self.fc1 = nn.Linear(128 * 7 * 7, 256)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, 10)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(p=0.1)

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))  # 28x28 -> 14x14
        x = self.pool(self.relu(self.conv2(x)))  # 14x14 -> 7x7
        x = self.flatten(x)
        x = self.dropout(self.relu(self.fc1(x)))
        x = self.dropout(self.relu(self.fc2(x)))
        return self.fc3(x)


def train(args, model, device, federated_train_loader, optimizer, epoch):
    model.train()
    total, seen = len(federated_train_loader.federated_dataset), 0
    for batch_idx, (data, target) in enumerate(federated_train_loader):
        worker = data.location  # <-- federated: the batch lives on client1 or client2
        model.send(worker)  # <-- federated: step 4, send a model copy to that client
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.cross_entropy(output, target)
        loss.backward()
        optimizer.step()
        model.get()  # <-- federated: step 5, bring the updated model back to the server
        seen += data.shape[0]
        if batch_idx % args.log_interval == 0:
            loss = loss.get()  # <-- federated: the loss is a pointer too
            print("Train Epoch: {} [{}/{} ({:.0f}%)]\tWorker: {}\tLoss: {:.6f}".format(
                epoch, seen, total, 100.0 * seen / total, worker.id, loss.item()), flush=True)


def test(model, device, test_loader):
    """Plain PyTorch: the test set stays on the server."""
    model.eval()
    test_loss, correct = 0.0, 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.cross_entropy(output, target, reduction="sum").item()
            correct += (output.argmax(dim=1) == target).sum().item()
    n = len(test_loader.dataset)
    test_loss /= n
    print("\nTest set: Average loss: {:.4f}, Accuracy: {}/{} ({:.0f}%)\n".format(
        test_loss, correct, n, 100.0 * correct / n), flush=True)
    return test_loss, correct / n


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="PySyft 0.2.x federated learning on MNIST")
    parser.add_argument("--batch-size", type=positive_int, default=64, metavar="N",
                        help="input batch size for training (default: 64)")
    parser.add_argument("--test-batch-size", type=positive_int, default=1000, metavar="N",
                        help="input batch size for testing (default: 1000)")
    parser.add_argument("--epochs", type=positive_int, default=1, metavar="N",
                        help="number of epochs to train (default: 1)")
    parser.add_argument("--lr", type=positive_float, default=0.01, metavar="LR",
                        help="SGD learning rate (default: 0.01)")
    parser.add_argument("--seed", type=int, default=1, metavar="S",
                        help="random seed (default: 1)")
    parser.add_argument("--log-interval", type=positive_int, default=10, metavar="N",
                        help="batches to wait before logging training status (default: 10)")
    parser.add_argument("--data-dir", default="./data", metavar="DIR",
                        help="folder holding MNIST/raw/*.gz; downloaded if missing (default: ./data)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to compute (default: auto, the GPU if torch 1.4 can use it)")
    parser.add_argument("--no-cuda", dest="device", action="store_const", const="cpu",
                        help="same as --device cpu")
    parser.add_argument("--save-model", metavar="PATH",
                        help="save the trained model's state_dict to PATH")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    hook = sy.TorchHook(torch)  # <-- federated: give torch the PySyft powers

    # Step 1: create the data owners.
    client1 = sy.VirtualWorker(hook, id="client1")  # <-- federated
    client2 = sy.VirtualWorker(hook, id="client2")  # <-- federated

    # Step 2: send the data to the clients.
    try:
        mnist.ensure(args.data_dir)  # download and verify, if needed
    except mnist.DataError as error:
        sys.exit("error: {}".format(error))
    federated_train_loader = sy.FederatedDataLoader(  # <-- federated
        datasets.MNIST(args.data_dir, train=True, transform=mnist.TRANSFORM)
        .federate((client1, client2)),  # <-- federated: split the data across the clients
        batch_size=args.batch_size, shuffle=True)
    test_loader = torch.utils.data.DataLoader(
        datasets.MNIST(args.data_dir, train=False, transform=mnist.TRANSFORM),
        batch_size=args.test_batch_size, shuffle=False)

    # Step 3: build the model.
    model = SimpleCNN().to(device)
    optimizer = optim.SGD(model.parameters(), lr=args.lr)

    # Step 6: train and test (steps 4 and 5 happen for every batch, inside train()).
    for epoch in range(1, args.epochs + 1):
        train(args, model, device, federated_train_loader, optimizer, epoch)
        test(model, device, test_loader)

    if args.save_model:
        torch.save(model.state_dict(), args.save_model)
        print("Saved the model to {}".format(args.save_model))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("Interrupted.")
