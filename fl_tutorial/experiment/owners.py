"""Steps 1 and 2 for every mode beyond the course: who the data owners are, and how each gets its share.

- VirtualWorkers trained through pointers, as in the course: the script's create_workers();
  with --aggregation secure they also know each other (the shares go from client to client).
  IID data comes from the script's federated_mnist() (`.federate()`); non-IID data as one
  dataset per client, sent to it.
- VirtualWorkers that train on their own share (--train-on client): pysyft/virtual_owners.py.
- Clients in their own processes (--workers websocket): remote/websocket_clients.py. They read
  their own MNIST (--data-from clients), or the server sends each its share (the script's
  federated_mnist()).
"""
import torch

from fl_tutorial.core import mnist, partition
from fl_tutorial.pysyft import owners, virtual_owners
from fl_tutorial.pysyft.env import import_syft
from fl_tutorial.remote import websocket_clients

sy = import_syft()


def create(settings, hook, cleanup, create_workers):
    """Step 1: the data owners. Client processes this run starts stop when `cleanup` (an ExitStack) closes.

    create_workers(hook, num_clients): the script's step 1, VirtualWorkers.
    """
    names = partition.client_names(settings.num_clients)
    if settings.workers == "websocket":  # each client its own process, reached over a websocket
        at_once = settings.num_clients if settings.strategy == "fedavg" and not settings.in_turn else 1
        return cleanup.enter_context(websocket_clients.clients(
            hook, names, settings.data_dir, connect=list(settings.connect or []), token_file=settings.token_file,
            ca=settings.ca, aggregator=settings.aggregator, trusted=settings.aggregation == "trusted",
            train_only=settings.train_on == "client", threads=websocket_clients.threads_per_client(at_once)))
    if settings.train_on == "client":  # VirtualWorkers with syft's `fit`: each trains on the share it keeps
        owner_class = virtual_owners.make_owner_class(sy)
        return owners.link_to_server(hook, [owner_class(hook, id=name, auto_add=False) for name in names])
    workers = create_workers(hook, settings.num_clients)
    if settings.aggregation == "secure":
        owners.link_to_each_other(workers)
    return workers


def shares(settings, workers, federated_mnist):
    """Step 2: each data owner gets its share. Returns the federated dataset and, per client, its sample
    count and label histogram (the start-up table).

    federated_mnist(settings, workers): the script's step 2, `.federate()` of the IID split.
    """
    if settings.data_from == "clients":  # each client reads its own MNIST; only the split's rule is sent
        return websocket_clients.own_shares(sy, workers, settings.rule, pointers=settings.train_on == "coordinator")
    if settings.partition == "iid" and settings.train_on == "coordinator":
        return federated_mnist(settings, workers)
    images, labels = mnist.normalized(settings.data_dir)
    parts = partition.split(labels.numpy(), settings.rule)
    clients = partition.describe(labels.numpy(), parts, [w.id for w in workers])
    if settings.train_on == "client":  # each client keeps its share; the server holds no pointer to it
        return virtual_owners.send_shares(sy, workers, images, labels, parts, settings.rule), clients
    return sy.FederatedDataset([  # one dataset per client, sent to it (syft's hooked [idx] misreads a short idx)
        sy.BaseDataset(images.index_select(0, idx).send(worker), labels.index_select(0, idx).send(worker))
        for worker, idx in zip(workers, map(torch.from_numpy, parts))]), clients
