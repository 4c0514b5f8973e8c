"""One round of Federated Averaging (McMahan et al. 2017): each of the round's clients trains its own copy.

Steps 4 and 5 differ from the course's model passing: the server sends every chosen
client a copy of the round's model, each trains it on its own share, and the server
takes their weighted average (the aggregation, privacy/). A copy trains in one of two ways:

- through pointers (--train-on coordinator), as the course trains: the copy goes to
  the client and the script's own training steps (train_steps()) run on it there;
- on the client (--train-on client): one request per visit, the data owner trains
  with plain PyTorch (pysyft/client_training.py).

Clients in their own processes train at the same time (remote/together.py) unless --in-turn.
"""
import copy
import functools

from fl_tutorial.privacy.aggregation import SecureAggregation, ServerAverage, TrustedAggregator
from fl_tutorial.privacy.peer_sum import PeerSum
from fl_tutorial.pysyft import client_training, pointer_sgd
from fl_tutorial.pysyft.env import import_syft
from fl_tutorial.pysyft.visits import visits
from fl_tutorial.remote import together, websocket_clients

sy = import_syft()


def make_averaging(settings, hook, aggregator=None):
    """The aggregation --aggregation asks for, with the extra worker it needs.

    With --workers websocket, secure and trusted run across the client processes
    (privacy/peer_sum.py); `aggregator` is then trusted's aggregator process.
    """
    dp_settings = dict(noise_multiplier=settings.dp_noise, clip=settings.dp_clip)
    if settings.workers == "websocket" and settings.aggregation != "server":
        return PeerSum(aggregator, **dp_settings)
    if settings.aggregation == "trusted":  # Part 04: the copies meet at a worker of their own
        return TrustedAggregator(sy.VirtualWorker(hook, id="aggregator"))
    if settings.aggregation == "secure":  # Part 10: additive secret sharing, with a crypto provider
        return SecureAggregation(sy.VirtualWorker(hook, id="crypto_provider"))
    return ServerAverage(**dp_settings)


class FedAvg:
    """The rounds of one run: how its clients train their copies, and how the server averages them.

    train_steps(model, device, batches, optimizer, progress): the script's training steps on a client's pointers.
    batch_size: the training batch (--batch-size full is the largest share by now).
    """

    def __init__(self, settings, averaging, train_steps, device, batch_size):
        self.settings, self.averaging, self.train_steps, self.device = settings, averaging, train_steps, device
        self.local_training = settings.local_training(batch_size)

    def round(self, model, loader, progress, chosen=None):
        """The chosen clients (every client if None) train their copies; the model becomes their average."""
        settings = self.settings
        if settings.train_on == "client":
            jobs = list(client_training.plans(loader, settings.max_batches, settings.local_epochs, chosen))
            train_one = functools.partial(self._on_the_client, loader, model, progress, self._threads(len(jobs)),
                                          self.averaging.next_round())
        else:
            jobs = visits(loader, max_batches=settings.max_batches, local_epochs=settings.local_epochs,
                          clients=chosen)
            train_one = functools.partial(self._through_pointers, loader, model, progress)
        if settings.workers == "websocket" and not settings.in_turn:  # separate processes train at the same time
            updates = together.train_together(train_one, jobs)
        else:
            updates = [train_one(worker, batches) for worker, batches in jobs]
        # step 5: the server gets the weighted average of the copies; with --aggregation server every
        # copy comes back, with trusted or secure only their average does (privacy/)
        model.load_state_dict(self.averaging.average(updates, start=model.state_dict()))

    def _through_pointers(self, loader, model, progress, worker, batches):
        """Step 4 as the course takes it: a copy goes to the client and trains there; it stays there for step 5.

        Returns the client's sample count and its copy."""
        local_model = copy.deepcopy(model).train()
        optimizer = pointer_sgd.SGD(local_model.parameters(), lr=self.settings.lr, prox_mu=self.settings.prox_mu)
        local_model.send(worker)
        if self.settings.prox_mu:  # FedProx: the round's weights go too, the anchor of the proximal term
            optimizer.anchor([p.data.clone().send(worker) for p in model.parameters()])
        self.train_steps(local_model, self.device, batches, optimizer, progress)
        return len(loader.federated_dataset[worker.id]), local_model

    def _on_the_client(self, loader, model, progress, threads, keep, worker, passes):
        """Steps 4 and 5 in one request: the client trains a copy on its own share and sends back the weights,
        or, where it keeps its update for a secure or trusted sum (keep), stands for its copy itself.

        Returns the client's sample count and its copy."""
        weights = client_training.train_visit(worker, model, passes, self.local_training, progress, threads, keep)
        return len(loader.federated_dataset[worker.id]), worker if keep else weights

    def _threads(self, training):
        """The torch threads of each client that this run started, when `training` of them train at once."""
        if self.settings.workers != "websocket" or self.settings.connect:
            return None  # in this process, or on machines of their own: their own setting
        return websocket_clients.threads_per_client(1 if self.settings.in_turn else training)
