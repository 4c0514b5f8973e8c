"""Federated learning on MNIST with PySyft 0.2.x.

This is the PyTorch MNIST example with the changes that make it federated,
each marked "<-- federated". It reads top to bottom as the course's six steps:
  1. create the data owners        4. send a model copy to a client
  2. send the data to the clients  5. bring the updated model back
  3. build the model               6. train and test

Run it with:  python federated_learning.py --epochs 1 --lr 0.01
"""
import argparse
import copy
import sys
import time

from fl_tutorial.env import import_syft, pick_device

sy = import_syft()  # <-- federated: checks Python 3.8, torch 1.4.0, syft 0.2.6 first

import torch  # noqa: E402  (after the check, so a wrong stack gets a message, not a traceback)
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torch.optim as optim  # noqa: E402
from torchvision import datasets  # noqa: E402

from fl_tutorial import mnist, partition, report  # noqa: E402
from fl_tutorial.batches import visits  # noqa: E402
from fl_tutorial.cli import positive_float, positive_int  # noqa: E402


def federated_mnist(args, workers):
    """Step 2: split MNIST's training set across the clients and send each its share."""
    if args.sync == "every-batch":  # the course: torchvision transforms image by image (~16 s)
        train_set = datasets.MNIST(args.data_dir, train=True, transform=mnist.TRANSFORM)
        shares = partition.like_federate(len(train_set), len(workers))
        return train_set.federate(workers), shares  # <-- federated
    images, labels = mnist.normalized(args.data_dir)  # the same tensors, made at once (~2.5 s)
    if args.partition == "iid":
        shares = partition.like_federate(len(labels), len(workers))
        return sy.BaseDataset(images, labels).federate(workers), shares  # <-- federated
    if args.dirichlet_alpha is not None:
        shares = partition.dirichlet(labels.numpy(), len(workers), args.dirichlet_alpha, args.seed)
    else:
        shares = partition.shards(labels.numpy(), len(workers), args.shards_per_client, args.seed)
    return sy.FederatedDataset([  # <-- federated: one dataset per client, sent to it
        sy.BaseDataset(images[idx].send(worker), labels[idx].send(worker))
        for worker, idx in zip(workers, map(torch.from_numpy, shares))]), shares


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


def train_on_client(model, device, optimizer, batches):
    """Plain PyTorch training steps, run on the client through pointers; yields (samples, loss)."""
    for data, target in batches:  # <-- federated: data and target are pointers
        if device.type != "cpu":
            data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.cross_entropy(output, target)
        loss.backward()
        optimizer.step()
        yield data.shape[0], loss.get().item()  # <-- federated: the loss is a pointer too


def train(args, model, device, federated_train_loader, optimizer, progress):
    """The course's model passing: one model travels from client to client."""
    model.train()
    # A visit is one client and the batches trained there: every batch on its own with
    # --sync every-batch (the course), else all of the client's consecutive batches.
    for worker, batches in visits(federated_train_loader, args.sync == "every-batch", args.max_batches):
        model.send(worker)  # <-- federated: step 4, send a model copy to the client
        for n, loss in train_on_client(model, device, optimizer, batches):
            progress.update(worker.id, n, loss)
        model.get()  # <-- federated: step 5, bring the updated model back to the server


def train_fedavg(args, model, device, federated_train_loader, progress):
    """One round of Federated Averaging (McMahan et al. 2017): each client trains its own copy."""
    updates = []
    for worker, batches in visits(federated_train_loader, max_batches=args.max_batches,
                                  local_epochs=args.local_epochs):
        local_model = copy.deepcopy(model).train()
        optimizer = optim.SGD(local_model.parameters(), lr=args.lr)
        local_model.send(worker)  # <-- federated: step 4, send a model copy to the client
        for n, loss in train_on_client(local_model, device, optimizer, batches):
            progress.update(worker.id, n, loss)
        local_model.get()  # <-- federated: step 5, bring the updated copy back to the server
        updates.append((len(federated_train_loader.federated_dataset[worker.id]), local_model.state_dict()))
    model.load_state_dict(federated_average(updates))


def federated_average(updates):
    """The weights of all copies, averaged with each client's share of the samples as weight."""
    total = sum(n for n, _ in updates)
    return {name: sum(state[name] * (n / total) for n, state in updates) for name in updates[0][1]}


def test(model, device, test_loader):
    """Plain PyTorch: the test set stays on the server. Returns loss, accuracy, per-class accuracy."""
    model.eval()
    test_loss, correct, per_class, per_class_total = 0.0, 0, torch.zeros(10), torch.zeros(10)
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.cross_entropy(output, target, reduction="sum").item()
            hits = (output.argmax(dim=1) == target).cpu()
            correct += hits.sum().item()
            per_class += torch.bincount(target.cpu(), weights=hits.float(), minlength=10)
            per_class_total += torch.bincount(target.cpu(), minlength=10).float()
    n = len(test_loader.dataset)
    test_loss /= n
    print("\nTest set: Average loss: {:.4f}, Accuracy: {}/{} ({:.0f}%)\n".format(
        test_loss, correct, n, 100.0 * correct / n), flush=True)
    return test_loss, correct / n, (per_class / per_class_total.clamp(min=1)).tolist()


def server_test_loader(args):
    """The test set stays on the server, read as in the PyTorch MNIST example."""
    return torch.utils.data.DataLoader(
        datasets.MNIST(args.data_dir, train=False, transform=mnist.TRANSFORM),
        batch_size=args.test_batch_size, shuffle=False)


def describe_clients(args, shares, workers):
    """Each client's sample count and label histogram, for the table at start and the metrics."""
    return partition.describe(datasets.MNIST(args.data_dir, train=True).targets.numpy(), shares,
                              [w.id for w in workers])


def run_epoch(args, epoch, model, device, federated_train_loader, optimizer, test_loader, metrics):
    """Step 6 for one epoch (with FedAvg, one round): train on the clients, test on the server, record."""
    start = time.time()
    fedavg = args.strategy == "fedavg"
    samples = len(federated_train_loader.federated_dataset) * (args.local_epochs if fedavg else 1)
    progress = report.Progress("Round" if fedavg else "Epoch", epoch, samples, args.log_interval)
    if fedavg:
        train_fedavg(args, model, device, federated_train_loader, progress)
    else:
        train(args, model, device, federated_train_loader, optimizer, progress)
    progress.close()
    test_loss, accuracy, per_class = test(model, device, test_loader)
    metrics.add({"epoch": epoch, "train_loss": progress.client_losses(), "test_loss": test_loss,
                 "test_accuracy": accuracy, "test_accuracy_per_class": per_class,
                 "seconds": time.time() - start})


def build_parser():
    parser = argparse.ArgumentParser(description="PySyft 0.2.x federated learning on MNIST")
    parser.add_argument("--batch-size", type=positive_int, default=64, metavar="N",
                        help="input batch size for training (default: 64)")
    parser.add_argument("--test-batch-size", type=positive_int, default=1000, metavar="N",
                        help="input batch size for testing (default: 1000)")
    parser.add_argument("--epochs", type=positive_int, default=1, metavar="N",
                        help="number of epochs to train; rounds with --strategy fedavg (default: 1)")
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
    parser.add_argument("--sync", choices=("per-visit", "every-batch"), default="per-visit",
                        help="when the model comes back to the server: after each client's run of "
                             "batches (default, fast) or after every batch, as in the course")
    parser.add_argument("--max-batches", type=positive_int, metavar="N",
                        help="stop each epoch after N batches (quick tries)")
    experiments = parser.add_argument_group("experiments")
    experiments.add_argument("--num-clients", type=positive_int, default=2, metavar="N",
                             help="number of clients, client1 ... clientN (default: 2)")
    experiments.add_argument("--partition", choices=("iid", "noniid"), default="iid",
                             help="iid: the course's .federate() (default); noniid: label shards or Dirichlet")
    experiments.add_argument("--shards-per-client", type=positive_int, metavar="K",
                             help="noniid: label-sorted shards per client (default: 2)")
    experiments.add_argument("--dirichlet-alpha", type=positive_float, metavar="A",
                             help="noniid: split each class by Dirichlet(A) instead of shards")
    experiments.add_argument("--strategy", choices=("sequential", "fedavg"), default="sequential",
                             help="sequential: the course's model passing (default); fedavg: Federated Averaging")
    experiments.add_argument("--local-epochs", type=positive_int, default=1, metavar="E",
                             help="fedavg: passes over its own data per client and round (default: 1)")
    experiments.add_argument("--metrics-out", metavar="PATH",
                             help="write config, partition and per-epoch metrics as JSON to PATH")
    experiments.add_argument("--plot", metavar="PATH",
                             help="draw test accuracy and loss per epoch into a PNG at PATH")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.partition == "iid" and (args.shards_per_client or args.dirichlet_alpha):
        parser.error("--shards-per-client and --dirichlet-alpha need --partition noniid")
    if args.shards_per_client and args.dirichlet_alpha:
        parser.error("choose one of --shards-per-client and --dirichlet-alpha")
    if args.partition == "noniid" and not args.dirichlet_alpha:
        args.shards_per_client = args.shards_per_client or 2
    if args.strategy == "sequential" and args.local_epochs != 1:
        parser.error("--local-epochs needs --strategy fedavg")
    if args.sync == "every-batch" and (args.strategy != "sequential" or args.partition != "iid"):
        parser.error("--sync every-batch is the course's loop: use it with the default "
                     "--strategy sequential and --partition iid")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    hook = sy.TorchHook(torch)  # <-- federated: give torch the PySyft powers

    # Step 1: create the data owners.
    workers = [sy.VirtualWorker(hook, id="client{}".format(i)) for i in range(1, args.num_clients + 1)]  # <-- federated

    # Step 2: send the data to the clients.
    try:
        mnist.ensure(args.data_dir)  # download and verify, if needed
        federated_train_set, shares = federated_mnist(args, workers)
    except mnist.DataError as error:
        sys.exit("error: {}".format(error))
    except partition.PartitionError as error:
        build_parser().error(str(error))
    federated_train_loader = sy.FederatedDataLoader(  # <-- federated
        federated_train_set, batch_size=args.batch_size, shuffle=True)
    test_loader = server_test_loader(args)
    clients = describe_clients(args, shares, workers)
    print(partition.table(clients) + "\n", flush=True)

    # Step 3: build the model.
    model = SimpleCNN().to(device)
    optimizer = optim.SGD(model.parameters(), lr=args.lr)

    # Step 6: train and test (steps 4 and 5 happen for every visit to a client, inside training).
    metrics = report.Metrics(vars(args), clients, args.metrics_out, args.plot)
    for epoch in range(1, args.epochs + 1):
        run_epoch(args, epoch, model, device, federated_train_loader, optimizer, test_loader, metrics)

    if args.save_model:
        torch.save(model.state_dict(), args.save_model)
        print("Saved the model to {}".format(args.save_model))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("Interrupted.")
