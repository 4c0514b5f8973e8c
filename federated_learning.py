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

from fl_tutorial import (aggregation, client_training, dp, evaluation, files, memory, mnist, options,  # noqa: E402
                         partition, pointer_sgd, report, sampling, together, virtual_owners, websocket_clients,
                         wire)
from fl_tutorial.batches import visits  # noqa: E402
from fl_tutorial.cli import batch_size, positive_float, positive_int, seed  # noqa: E402
from fl_tutorial.model import SimpleCNN  # noqa: E402  (plain PyTorch, shared with the Flower twin in flower/)


def create_workers(args, hook, cleanup):
    """Step 1: the data owners: VirtualWorkers in this process, as in the course, or real processes."""
    if args.workers == "websocket":  # <-- federated: each client its own process, reached over a websocket
        return cleanup.enter_context(websocket_clients.clients(hook, args))
    # --train-on client: VirtualWorkers that train on their own share (fl_tutorial/virtual_owners.py)
    VirtualWorker = virtual_owners.make_owner_class(sy) if args.train_on == "client" else sy.VirtualWorker
    workers = [VirtualWorker(hook, id="client{}".format(i), auto_add=False)  # <-- federated
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
    if args.train_on == "client":  # <-- federated: each client keeps its share; the server holds no pointer to it
        return virtual_owners.send_shares(sy, workers, images, labels, shares, partition.rule(args)), clients
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
    return pointer_sgd.SGD(parameters, lr=args.lr, prox_mu=args.prox_mu)  # <-- federated: fl_tutorial/pointer_sgd.py


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
            model.load_state_dict(client_training.train_visit(worker, model, passes, args, progress))
        return
    # A visit is one client and the batches trained there: every batch on its own with
    # --sync every-batch (the course), else all of the client's consecutive batches.
    for worker, batches in visits(federated_train_loader, args.sync == "every-batch", args.max_batches):
        model.send(worker)  # <-- federated: step 4, send a model copy to the client
        for n, loss in train_on_client(model, device, optimizer, batches):
            progress.update(worker.id, n, loss)
        model.get()  # <-- federated: step 5, bring the updated model back to the server


def train_fedavg(args, model, device, federated_train_loader, progress, averaging, chosen=None):
    """One round of Federated Averaging (McMahan et al. 2017): each client trains its own copy.

    chosen: the ids of this round's clients (--clients-per-round), or None for every client.
    """
    def train_copy(worker, batches):
        local_model = copy.deepcopy(model).train()
        optimizer = sgd(args, local_model.parameters())
        local_model.send(worker)  # <-- federated: step 4, send a model copy to the client
        if args.prox_mu:  # FedProx: the round's weights go too, the anchor of the proximal term
            optimizer.anchor([p.data.clone().send(worker) for p in model.parameters()])
        for n, loss in train_on_client(local_model, device, optimizer, batches):
            progress.update(worker.id, n, loss)
        return len(federated_train_loader.federated_dataset[worker.id]), local_model

    # --workers websocket with --aggregation secure|trusted: the clients keep their updates (peer_aggregation.py)
    keep = averaging.next_round() if hasattr(averaging, "next_round") else None

    def train_own_copy(worker, passes):  # <-- federated: steps 4 and 5 in one request, the client trains its copy
        samples = len(federated_train_loader.federated_dataset[worker.id])
        weights = client_training.train_visit(worker, model, passes, args, progress, threads, keep)
        return samples, worker if keep else weights  # keep: the update stays on the client, for its shares

    if args.train_on == "client":  # --workers websocket's default for FedAvg (fl_tutorial/client_training.py)
        train_one = train_own_copy
        clients = list(client_training.plans(federated_train_loader, args.max_batches, args.local_epochs, chosen))
        threads = (websocket_clients.threads_per_client(args, training=len(clients))  # their share of the cores
                   if args.workers == "websocket" else None)
    else:
        train_one = train_copy
        clients = visits(federated_train_loader, max_batches=args.max_batches, local_epochs=args.local_epochs,
                         clients=chosen)
    if args.workers == "websocket" and not args.in_turn:  # <-- federated: separate processes train at once
        updates = together.train_together(train_one, clients)
    else:
        updates = [train_one(worker, batches) for worker, batches in clients]
    # <-- federated: step 5, the server gets the weighted average of the copies; with --aggregation
    # server every copy comes back, with trusted or secure only the average does (fl_tutorial/aggregation.py)
    model.load_state_dict(averaging.average(updates, start=model.state_dict()))


def test(model, device, test_loader):
    """Plain PyTorch: the test set stays on the server. Returns loss, accuracy, per-class accuracy.

    The loop is fl_tutorial/evaluation.py's, which the Flower twin runs too: both print the same line.
    """
    return evaluation.test(model, test_loader, len(test_loader.dataset), device)


def server_test_loader(args):
    """The test set stays on the server, read as in the PyTorch MNIST example."""
    return torch.utils.data.DataLoader(
        datasets.MNIST(args.data_dir, train=False, transform=mnist.TRANSFORM),
        batch_size=args.test_batch_size, shuffle=False)


def run_epoch(args, epoch, model, device, federated_train_loader, optimizer, test_loader, metrics,
              averaging=None, sampler=None, accountant=None):
    """Step 6 for one epoch (with FedAvg, one round): train on the clients, test on the server, record.

    sampler: draws the round's clients (--clients-per-round; fl_tutorial/sampling.py), None for all of them.
    accountant: DP-FedAvg's privacy spent (--dp-clip; fl_tutorial/dp.py), printed after every round.
    Tests after every epoch, or every --test-every rounds and after the last.
    """
    start = time.time()
    fedavg = args.strategy == "fedavg"
    chosen = sampler.next_round() if sampler else None  # <-- federated: this round's clients (the paper's C·K)
    shares = federated_train_loader.federated_dataset.datasets
    samples = sum(len(shares[w]) for w in chosen or shares) * (args.local_epochs if fedavg else 1)
    progress = report.Progress("Round" if fedavg else "Epoch", epoch, samples, args.log_interval)
    if fedavg:
        averaging = averaging or aggregation.ServerAverage()
        train_fedavg(args, model, device, federated_train_loader, progress, averaging, chosen)
    else:
        train(args, model, device, federated_train_loader, optimizer, progress)
    progress.close()
    record = {"epoch": epoch, "train_loss": progress.client_losses()}
    if chosen is not None:
        record["clients"] = chosen
    if epoch % args.test_every == 0 or epoch == args.epochs:
        test_loss, accuracy, per_class = test(model, device, test_loader)
        record.update(test_loss=test_loss, test_accuracy=accuracy, test_accuracy_per_class=per_class)
    record["seconds"] = time.time() - start
    if fedavg:
        record["aggregation_seconds"] = averaging.seconds
    if accountant:  # <-- federated: DP-FedAvg, the privacy spent so far
        record["epsilon"] = dp.report(accountant.step(), accountant.delta, epoch)
    metrics.add(record)


def build_parser():
    parser = argparse.ArgumentParser(description="PySyft 0.2.x federated learning on MNIST")
    parser.add_argument("--batch-size", type=batch_size, default=64, metavar="N",
                        help="input batch size for training (default: 64); full: each client's whole share, "
                             "one batch (FedSGD's B = infinity, with --strategy fedavg)")
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
    options.add(parser)  # the flags the course never had: experiments, clients as processes
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    options.check(parser, args)  # what cannot work together stops here (fl_tutorial/options.py)
    return args


def main(argv=None):
    args = parse_args(argv)
    config = dict(vars(args))  # as given (check_full_batch_fits turns --batch-size full into a number)
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
        check_full_batch_fits(args, clients)  # --batch-size full: the largest share is the batch
        federated_train_loader = sy.FederatedDataLoader(  # <-- federated
            federated_train_set, batch_size=args.batch_size, shuffle=True)
        test_loader = server_test_loader(args)
        print(partition.table(clients) + "\n", flush=True)

        # Step 3: build the model.
        model = SimpleCNN(dropout=args.dropout).to(device)
        optimizer = sgd(args, model.parameters())
        averaging = aggregation.make(args, sy, hook, getattr(workers, "aggregator", None))  # <-- federated

        # Step 6: train and test (steps 4 and 5 happen for every visit to a client, inside training).
        sampler = args.clients_per_round and sampling.ClientSampler(  # <-- federated: FedAvg's C·K clients a round
            [w.id for w in workers], args.clients_per_round, args.seed)
        accountant = args.dp_clip and dp.Accountant(  # <-- federated: DP-FedAvg's privacy spent (--dp-clip)
            args.dp_noise or 0.0, args.dp_delta, args.num_clients, args.clients_per_round or args.num_clients)
        metrics = report.Metrics(config, clients, args.metrics_out, args.plot, args.target_accuracy,
                                 privacy=accountant and accountant.describe())
        for epoch in range(1, args.epochs + 1):
            run_epoch(args, epoch, model, device, federated_train_loader, optimizer, test_loader, metrics,
                      averaging, sampler, accountant)
            if metrics.reached_target:  # --target-accuracy: the first round that reaches it ends the run
                break
        metrics.summary()

    if args.save_model:
        save_model(model, args.save_model)


def check_it_fits(args):
    """Impossible values stop here, before any client exists: too many clients, a batch too big for memory."""
    try:
        if not args.connect:  # clients started elsewhere have their own data, and say so themselves
            partition.check_enough_samples(args.num_clients, mnist.train_size(args.data_dir))
    except partition.PartitionError as error:
        build_parser().error(str(error))
    train_batch = 1 if args.batch_size == "full" else args.batch_size  # full: checked once the shares are known
    problem = memory.check(lambda: SimpleCNN(dropout=args.dropout), train_batch, args.test_batch_size)
    if not problem and args.workers == "websocket" and not args.connect:
        problem = memory.check_client_processes(args.num_clients)
    if problem:
        build_parser().error(problem)


def check_full_batch_fits(args, clients):
    """--batch-size full: each client's batch is its whole share; the largest must fit in memory."""
    if args.batch_size == "full":
        args.batch_size = max(c["samples"] for c in clients)
        problem = memory.check(lambda: SimpleCNN(dropout=args.dropout), args.batch_size, args.test_batch_size)
        if problem:
            build_parser().error("--batch-size full: the largest share, {} samples, is one batch. {}".format(
                args.batch_size, problem))


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
