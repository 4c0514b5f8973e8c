"""Federated learning on MNIST with PySyft 0.2.x.

This is the PyTorch MNIST example with the changes that make it federated,
each marked "<-- federated". It reads top to bottom as the course's six steps:
  1. create the data owners        4. send a model copy to a client
  2. send the data to the clients  5. bring the updated model back
  3. build the model               6. train and test

Run it with:  python federated_learning.py --epochs 1 --lr 0.01
"""
import argparse
import contextlib
import copy
import sys
import time

from fl_tutorial.env import import_syft, pick_device

sy = import_syft()  # <-- federated: checks Python 3.8, torch 1.4.0, syft 0.2.6 first

import torch  # noqa: E402  (after the check, so a wrong stack gets a message, not a traceback)
import torch.nn.functional as F  # noqa: E402
import torch.optim as optim  # noqa: E402
from torchvision import datasets  # noqa: E402

from fl_tutorial import (aggregation, client_training, files, memory, mnist, partition, pointer_sgd,  # noqa: E402
                         report, security, together, websocket_clients, wire)
from fl_tutorial.batches import visits  # noqa: E402
from fl_tutorial.cli import positive_float, positive_int, probability, seed  # noqa: E402
from fl_tutorial.model import SimpleCNN  # noqa: E402  (plain PyTorch, shared with the Flower twin in flower/)


def create_workers(args, hook, cleanup):
    """Step 1: the data owners: VirtualWorkers in this process, as in the course, or real processes."""
    if args.workers == "websocket":  # <-- federated: each client its own process, reached over a websocket
        return cleanup.enter_context(websocket_clients.clients(hook, args))
    workers = [sy.VirtualWorker(hook, id="client{}".format(i), auto_add=False)  # <-- federated
               for i in range(1, args.num_clients + 1)]
    for worker in workers:  # syft's auto_add links every worker with every other: O(N^2) for N clients
        hook.local_worker.add_worker(worker)
        worker.add_worker(hook.local_worker)
        if args.aggregation == "secure":
            worker.add_workers(workers)  # the shares go from client to client
    return workers


def federated_mnist(args, workers):
    """Step 2: split MNIST's training set across the clients and send each its share.

    Returns the federated dataset and, per client, its sample count and label histogram.
    """
    if args.data_from == "clients":  # <-- federated: each client reads its own share; only the rule is sent
        return websocket_clients.own_shares(sy, workers, partition.rule(args), pointers=args.train_on == "coordinator")
    names = [w.id for w in workers]
    if args.sync == "every-batch":  # the course: torchvision transforms image by image (~16 s)
        train_set = datasets.MNIST(args.data_dir, train=True, transform=mnist.TRANSFORM)
        shares = partition.like_federate(len(train_set), len(workers))
        return train_set.federate(workers), partition.describe(train_set.targets.numpy(), shares, names)  # <-- federated
    images, labels = mnist.normalized(args.data_dir)  # the same tensors, made at once (~2.5 s)
    shares = partition.split(labels.numpy(), partition.rule(args))
    clients = partition.describe(labels.numpy(), shares, names)
    if args.partition == "iid":
        return sy.BaseDataset(images, labels).federate(workers), clients  # <-- federated
    return sy.FederatedDataset([  # <-- federated: one dataset per client, sent to it
        sy.BaseDataset(images.index_select(0, idx).send(worker), labels.index_select(0, idx).send(worker))
        for worker, idx in zip(workers, map(torch.from_numpy, shares))]), clients  # (hooked [idx] misreads short idx)


def sgd(args, parameters):
    """The optimizer: torch's SGD in the course's loop; in the default loop the same arithmetic,

    asking the clients about their gradients only once (half the syft messages per step).
    """
    if args.sync == "every-batch":
        return optim.SGD(parameters, lr=args.lr)
    return pointer_sgd.SGD(parameters, lr=args.lr)  # <-- federated: fl_tutorial/pointer_sgd.py


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
    if args.train_on == "client":  # <-- federated: steps 4 and 5 in one request, the client trains its visit itself
        for worker, passes in client_training.plans(federated_train_loader, args.max_batches):
            model.load_state_dict(client_training.train_visit(worker, model, passes, args, progress)[1])
        return
    # A visit is one client and the batches trained there: every batch on its own with
    # --sync every-batch (the course), else all of the client's consecutive batches.
    for worker, batches in visits(federated_train_loader, args.sync == "every-batch", args.max_batches):
        model.send(worker)  # <-- federated: step 4, send a model copy to the client
        for n, loss in train_on_client(model, device, optimizer, batches):
            progress.update(worker.id, n, loss)
        model.get()  # <-- federated: step 5, bring the updated model back to the server


def train_fedavg(args, model, device, federated_train_loader, progress, averaging):
    """One round of Federated Averaging (McMahan et al. 2017): each client trains its own copy."""
    def train_copy(worker, batches):
        local_model = copy.deepcopy(model).train()
        optimizer = sgd(args, local_model.parameters())
        local_model.send(worker)  # <-- federated: step 4, send a model copy to the client
        for n, loss in train_on_client(local_model, device, optimizer, batches):
            progress.update(worker.id, n, loss)
        return len(federated_train_loader.federated_dataset[worker.id]), local_model

    def train_own_copy(worker, passes):  # <-- federated: steps 4 and 5 in one request, the client trains its copy
        samples = len(federated_train_loader.federated_dataset[worker.id])
        return samples, client_training.train_visit(worker, model, passes, args, progress, threads)[1]

    if args.train_on == "client":  # --workers websocket's default for FedAvg (fl_tutorial/client_training.py)
        train_one = train_own_copy
        clients = list(client_training.plans(federated_train_loader, args.max_batches, args.local_epochs))
        threads = websocket_clients.threads_per_client(args, training=len(clients))  # their share of the cores
    else:
        train_one = train_copy
        clients = visits(federated_train_loader, max_batches=args.max_batches, local_epochs=args.local_epochs)
    if args.workers == "websocket" and not args.in_turn:  # <-- federated: separate processes train at once
        updates = together.train_together(train_one, clients)
    else:
        updates = [train_one(worker, batches) for worker, batches in clients]
    # <-- federated: step 5, the server gets the weighted average of the copies; with --aggregation
    # server every copy comes back, with trusted or secure only the average does (fl_tutorial/aggregation.py)
    model.load_state_dict(averaging.average(updates))


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


def run_epoch(args, epoch, model, device, federated_train_loader, optimizer, test_loader, metrics,
              averaging=None):
    """Step 6 for one epoch (with FedAvg, one round): train on the clients, test on the server, record."""
    start = time.time()
    fedavg = args.strategy == "fedavg"
    samples = len(federated_train_loader.federated_dataset) * (args.local_epochs if fedavg else 1)
    progress = report.Progress("Round" if fedavg else "Epoch", epoch, samples, args.log_interval)
    if fedavg:
        averaging = averaging or aggregation.ServerAverage()
        train_fedavg(args, model, device, federated_train_loader, progress, averaging)
    else:
        train(args, model, device, federated_train_loader, optimizer, progress)
    progress.close()
    test_loss, accuracy, per_class = test(model, device, test_loader)
    record = {"epoch": epoch, "train_loss": progress.client_losses(), "test_loss": test_loss,
              "test_accuracy": accuracy, "test_accuracy_per_class": per_class, "seconds": time.time() - start}
    if fedavg:
        record["aggregation_seconds"] = averaging.seconds
    metrics.add(record)


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
    parser.add_argument("--seed", type=seed, default=1, metavar="S",
                        help="random seed, 0 to 2**32 - 1 (default: 1)")
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
    experiments.add_argument("--num-clients", type=positive_int, metavar="N",
                             help="number of clients, client1 ... clientN (default: 2, or those of --connect)")
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
    experiments.add_argument("--aggregation", choices=("server", "trusted", "secure"), default="server",
                             help="fedavg: how the server gets the average: every copy comes back (default); "
                                  "trusted: a separate aggregator averages (Part 04); secure: additive secret "
                                  "sharing, only the sum is decoded (Part 10)")
    experiments.add_argument("--dropout", type=probability, default=0.1, metavar="P",
                             help="SimpleCNN's dropout probability (default: 0.1)")
    experiments.add_argument("--metrics-out", metavar="PATH",
                             help="write config, partition and per-epoch metrics as JSON to PATH")
    experiments.add_argument("--plot", metavar="PATH",
                             help="draw test accuracy and loss per epoch into a PNG at PATH")
    remote = parser.add_argument_group("clients in their own processes (README, \"Separate parties\")")
    remote.add_argument("--workers", choices=("virtual", "websocket"), default="virtual",
                        help="virtual: VirtualWorkers in this process, as in the course (default); websocket: "
                             "each client is its own process (syft's WebsocketServerWorker)")
    remote.add_argument("--connect", type=websocket_clients.parse_connect, metavar="NAME=HOST:PORT,...",
                        help="websocket: use clients already running (python -m fl_tutorial.worker) instead of "
                             "starting them on 127.0.0.1")
    remote.add_argument("--token-file", metavar="FILE",
                        help="websocket: the token the clients were started with")
    remote.add_argument("--ca", metavar="FILE",
                        help="websocket with --connect: the clients serve wss://; verify them against this CA")
    remote.add_argument("--in-turn", action="store_true",
                        help="websocket with fedavg: train the clients one after the other, not at the same time")
    remote.add_argument("--train-on", choices=("coordinator", "client"),
                        help="websocket: who runs training: the coordinator, step by step through pointers, as in "
                             "the course (default for sequential); or each client, on its own share, one request "
                             "per visit (default for fedavg; the clients this run starts are then train-only)")
    remote.add_argument("--data-from", choices=("clients", "server"),
                        help="websocket: clients read their own MNIST and keep their share (default), or the "
                             "server sends each its share with .federate(), as the course does")
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
    check_workers_args(parser, args)
    for flag, path in (("--save-model", args.save_model), ("--metrics-out", args.metrics_out), ("--plot", args.plot)):
        problem = path and files.cannot_write(path)
        if problem:
            parser.error("{} {}: {}".format(flag, path, problem))
    if args.aggregation != "server":
        if args.strategy != "fedavg":
            parser.error("--aggregation {} is for --strategy fedavg".format(args.aggregation))
        if args.workers == "websocket":
            parser.error("--aggregation {} needs workers that reach one another ({}); syft 0.2.6's websocket "
                         "clients only reach the coordinator. Use --workers virtual, or --aggregation server".format(
                             args.aggregation, "the aggregator" if args.aggregation == "trusted"
                             else "each client sends shares to the others"))
        if args.aggregation == "secure" and args.num_clients < 2:
            parser.error("--aggregation secure needs at least 2 clients: a sum of one update is the update")
    return args


def check_workers_args(parser, args):
    """--workers websocket and its companions; fills in --num-clients from --connect and --data-from."""
    websocket_flags = [flag for flag, value in (("--connect", args.connect), ("--token-file", args.token_file),
                                                ("--ca", args.ca), ("--data-from", args.data_from),
                                                ("--in-turn", args.in_turn), ("--train-on", args.train_on)) if value]
    if args.workers == "virtual" and websocket_flags:
        parser.error("{} needs --workers websocket".format(websocket_flags[0]))
    if args.ca and not args.connect:
        parser.error("--ca is for clients started elsewhere: give --connect too")
    try:  # unreadable or too short now, not after the clients have started
        args.token_file and security.read_token(args.token_file)
        args.ca and security.client_sslopt(args.ca)
    except security.SecurityError as error:
        parser.error(str(error))
    if args.connect and args.num_clients not in (None, len(args.connect)):
        parser.error("--connect names {} client(s), but --num-clients is {}".format(len(args.connect), args.num_clients))
    args.num_clients = args.num_clients or (len(args.connect) if args.connect else 2)
    if args.train_on == "client" and (args.data_from == "server" or args.sync == "every-batch"):
        parser.error("--train-on client trains on the clients' own data, a visit at a time: leave out {}".format(
            "--data-from server" if args.data_from == "server" else "--sync every-batch"))
    args.data_from = args.data_from or ("clients" if args.workers == "websocket" else "server")
    fedavg_on_owners = args.workers == "websocket" and args.strategy == "fedavg" and args.data_from == "clients"
    args.train_on = args.train_on or ("client" if fedavg_on_owners and args.sync == "per-visit" else "coordinator")


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    hook = sy.TorchHook(torch)  # <-- federated: give torch the PySyft powers
    try:
        mnist.ensure(args.data_dir)  # download and verify, if needed (clients this run starts read it too)
    except mnist.DataError as error:
        sys.exit("error: {}".format(error))
    check_it_fits(args)

    with contextlib.ExitStack() as cleanup:  # with --workers websocket: disconnects, stops the clients it started
        # Step 1: create the data owners.
        workers = create_workers(args, hook, cleanup)

        # Step 2: send the data to the clients.
        try:
            federated_train_set, clients = federated_mnist(args, workers)
        except partition.PartitionError as error:
            build_parser().error(str(error))
        federated_train_loader = sy.FederatedDataLoader(  # <-- federated
            federated_train_set, batch_size=args.batch_size, shuffle=True)
        test_loader = server_test_loader(args)
        print(partition.table(clients) + "\n", flush=True)

        # Step 3: build the model.
        model = SimpleCNN(dropout=args.dropout).to(device)
        optimizer = sgd(args, model.parameters())
        averaging = aggregation.make(args.aggregation, sy, hook)  # <-- federated: FedAvg's step 5 (--aggregation)

        # Step 6: train and test (steps 4 and 5 happen for every visit to a client, inside training).
        metrics = report.Metrics(vars(args), clients, args.metrics_out, args.plot)
        for epoch in range(1, args.epochs + 1):
            run_epoch(args, epoch, model, device, federated_train_loader, optimizer, test_loader, metrics,
                      averaging)

    if args.save_model:
        save_model(model, args.save_model)


def check_it_fits(args):
    """Impossible values stop here, before any client exists: too many clients, a batch too big for memory."""
    try:
        if not args.connect:  # clients started elsewhere have their own data, and say so themselves
            partition.check_enough_samples(args.num_clients, mnist.train_size(args.data_dir))
    except partition.PartitionError as error:
        build_parser().error(str(error))
    problem = memory.check(lambda: SimpleCNN(dropout=args.dropout), args.batch_size, args.test_batch_size)
    if not problem and args.workers == "websocket" and not args.connect:
        problem = memory.check_client_processes(args.num_clients)
    if problem:
        build_parser().error(problem)


def save_model(model, path):
    """Save the trained state_dict atomically; if PATH fails now, save it elsewhere and say where."""
    state = model.state_dict()
    rescue_name = "federated_learning-model-{}.pt".format(time.strftime("%Y%m%d-%H%M%S"))
    saved, error = files.write_or_rescue(path, lambda f: torch.save(state, f), rescue_name)
    if error is not None:
        sys.exit("error: could not save the model to {} ({}); it is saved in {} instead.".format(
            path, error.strerror or error, saved))
    print("Saved the model to {}".format(saved))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("Interrupted.")
    except (websocket_clients.ClientError, aggregation.AggregationError, wire.Refused) as error:
        sys.exit("error: {}".format(error))  # a client is gone, or sent what this side refuses; no average
