"""Federated learning on MNIST with PySyft 0.2.x: the course's Part 06.

The PyTorch MNIST example, with the lines that make it federated marked "<-- federated".
It reads top to bottom as the course's six steps:
  1. create the data owners        4. send a model copy to a client
  2. send the data to the clients  5. bring the updated model back
  3. build the model               6. train and test

Run it with:  python federated_learning.py --epochs 1 --lr 0.01   (every flag beyond the course's,
FedAvg, non-IID data, client processes or privacy, runs these steps from fl_tutorial/experiment/modes.py)
"""
import argparse

from fl_tutorial.pysyft.env import import_syft, pick_device

sy = import_syft()  # <-- federated: syft 0.2.6, once Python 3.8 and torch 1.4.0 are checked

import torch  # noqa: E402  (after the check: a wrong stack gets a message, not a traceback)
import torch.nn.functional as F  # noqa: E402
import torch.optim as optim  # noqa: E402
from torchvision import datasets  # noqa: E402

from fl_tutorial.core import cli, evaluation, files, mnist, partition, report  # noqa: E402
from fl_tutorial.core.model import SimpleCNN  # noqa: E402  (plain PyTorch, shared with the Flower twin)
from fl_tutorial.experiment import modes, options, preflight  # noqa: E402
from fl_tutorial.pysyft import exits, owners, pointer_sgd  # noqa: E402
from fl_tutorial.pysyft.visits import visits  # noqa: E402


def create_workers(hook, num_clients):
    """Step 1: the data owners, VirtualWorkers in this process: client1, client2, ..."""
    workers = [sy.VirtualWorker(hook, id=name, auto_add=False)  # <-- federated
               for name in partition.client_names(num_clients)]
    return owners.link_to_server(hook, workers)  # each knows the server alone (auto_add: every other client too)


def federated_mnist(settings, workers):
    """Step 2: MNIST's training set, split across the clients; returns it and each client's share of labels."""
    if settings.sync == "every-batch":  # the course: torchvision's transform, image by image (~16 s)
        train_set = datasets.MNIST(settings.data_dir, train=True, transform=mnist.TRANSFORM)
    else:  # the very same tensors, normalised at once (~2.5 s)
        train_set = sy.BaseDataset(*mnist.normalized(settings.data_dir))
    shares = partition.like_federate(len(train_set), len(workers))
    clients = partition.describe(train_set.targets.numpy(), shares, [w.id for w in workers])
    return train_set.federate(workers), clients  # <-- federated: each client gets its share


def sgd(settings, parameters):
    """torch's SGD; the default loop's has its arithmetic and asks the clients half as much (pysyft/pointer_sgd.py)."""
    if settings.sync == "every-batch":
        return optim.SGD(parameters, lr=settings.lr)
    return pointer_sgd.SGD(parameters, lr=settings.lr)


def train(model, device, client_visits, optimizer, progress):
    """Steps 4 and 5 at every visit: the model goes to a client, trains on its batches there, and comes back.

    With --sync every-batch a visit is one batch, as in the course; by default it is all of a
    client's consecutive batches, the same batches in fewer trips (fl_tutorial/pysyft/visits.py).
    """
    model.train()
    for worker, batches in client_visits:
        model.send(worker)  # <-- federated: step 4, send a model copy to the client
        train_steps(model, device, batches, optimizer, progress)
        model.get()  # <-- federated: step 5, bring the updated model back to the server


def train_steps(model, device, batches, optimizer, progress):
    """Plain PyTorch training steps, run on the client that holds the batches."""
    for data, target in batches:  # <-- federated: data and target are pointers to the client's data
        if device.type != "cpu":
            data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(data), target)
        loss.backward()
        optimizer.step()
        progress.update(data.location.id, data.shape[0], loss.get().item())  # <-- federated: the loss comes back


def test(model, device, test_loader):
    """Step 6: the test set stays on the server, plain PyTorch. Returns loss, accuracy, per-class accuracy."""
    model.eval()
    score = evaluation.Score()  # the course's sums, and the accuracy of each digit
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            score.add(model(data), target)
    return score.report()  # prints the course's "Test set:" line


def server_test_loader(settings):
    return torch.utils.data.DataLoader(datasets.MNIST(settings.data_dir, train=False, transform=mnist.TRANSFORM),
                                       batch_size=settings.test_batch_size, shuffle=False)


def build_parser():
    """The course's flags; the package adds the rest (python federated_learning.py --help lists them)."""
    parser = argparse.ArgumentParser(description="PySyft 0.2.x federated learning on MNIST")
    parser.add_argument("--batch-size", type=cli.batch_size, default=64, metavar="N",
                        help="input batch size for training (default: 64); full: each client's whole share, "
                             "one batch (FedSGD's B = infinity, with --strategy fedavg)")
    parser.add_argument("--test-batch-size", type=cli.positive_int, default=1000, metavar="N",
                        help="input batch size for testing (default: 1000)")
    parser.add_argument("--epochs", type=cli.positive_int, default=1, metavar="N",
                        help="number of epochs to train; rounds with --strategy fedavg (default: 1)")
    parser.add_argument("--lr", type=cli.positive_float, default=0.01, metavar="LR",
                        help="SGD learning rate (default: 0.01)")
    parser.add_argument("--seed", type=cli.seed, default=1, metavar="S",
                        help="random seed, 0 to 2**32 - 1 (default: 1)")
    parser.add_argument("--log-interval", type=cli.positive_int, default=10, metavar="N",
                        help="batches to wait before logging training status (default: 10)")
    parser.add_argument("--data-dir", default="./data", metavar="DIR",
                        help="folder holding MNIST/raw/*.gz; downloaded if missing (default: ./data)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to compute (default: auto, the GPU if torch 1.4 can use it)")
    parser.add_argument("--no-cuda", dest="device", action="store_const", const="cpu", help="same as --device cpu")
    parser.add_argument("--save-model", metavar="PATH", help="save the trained model's state_dict to PATH")
    parser.add_argument("--sync", choices=("per-visit", "every-batch"), default="per-visit",
                        help="when the model comes back to the server: after each client's run of "
                             "batches (default, fast) or after every batch, as in the course")
    parser.add_argument("--max-batches", type=cli.positive_int, metavar="N",
                        help="stop each epoch after N batches (quick tries)")
    options.add_flags(parser)  # the flags the course never had: experiments, clients as processes, privacy
    return parser


def main(argv=None):
    parser = build_parser()
    settings = options.parse(parser, argv)  # checked once, then frozen (fl_tutorial/experiment/options.py)
    torch.manual_seed(settings.seed)
    device = pick_device(settings.device)
    hook = sy.TorchHook(torch)  # <-- federated: give torch the PySyft powers
    preflight.check_it_fits(settings, parser.error)  # MNIST, the split, memory: before any work
    if settings.beyond_the_course:  # FedAvg, non-IID, clients as processes, privacy: these steps, composed
        return modes.run(settings, hook, device, modes.Steps(create_workers, federated_mnist, sgd, train, train_steps,
                                                             test, server_test_loader), parser.error)
    # Step 1: create the data owners.
    workers = create_workers(hook, settings.num_clients)

    # Step 2: send the data to the clients.
    federated_train_set, clients = federated_mnist(settings, workers)
    federated_train_loader = sy.FederatedDataLoader(  # <-- federated
        federated_train_set, batch_size=settings.batch_size, shuffle=True)
    test_loader = server_test_loader(settings)
    print(partition.table(clients) + "\n", flush=True)

    # Step 3: build the model.
    model = SimpleCNN(dropout=settings.dropout).to(device)
    optimizer = sgd(settings, model.parameters())

    # Step 6: train and test; steps 4 and 5 happen at every visit to a client, in train().
    metrics = report.Metrics(settings.config(), clients, settings.metrics_out, settings.plot)
    for epoch in range(1, settings.epochs + 1):
        with report.Progress("Epoch", epoch, len(federated_train_set), settings.log_interval) as progress:
            client_visits = visits(federated_train_loader, settings.sync == "every-batch", settings.max_batches)
            train(model, device, client_visits, optimizer, progress)
        metrics.add(report.record(epoch, progress, test(model, device, test_loader)))
    if settings.save_model:
        print(files.save_model(model.state_dict(), settings.save_model, "federated_learning"))


if __name__ == "__main__":
    exits.run(main)  # Ctrl-C, a client gone: one line, no traceback (fl_tutorial/pysyft/exits.py)
