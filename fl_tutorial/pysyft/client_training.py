"""Training on the client (`--train-on client`): one exchange per visit, plain PyTorch at the data owner's.

The coordinator draws each visit's batches exactly as the course's loop does
(the same samplers, so the same random numbers), then sends the client syft's
`fit` worker command with the weights, the batches (index lists into the
client's own share) and the settings. The client trains on its share with
plain PyTorch and answers with the updated weights, its sample count and each
batch's loss. No pointer to the data exists on the coordinator; a train-only
data owner (`python -m fl_tutorial.worker --train-only`) answers nothing else,
and returns no losses.

With `--prox-mu` the client adds FedProx's proximal term to its steps
(pointer_sgd.py's update()), anchored at the weights it was sent.
"""
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from fl_tutorial.core.model import SimpleCNN
from fl_tutorial.privacy import dp
from fl_tutorial.pysyft.pointer_sgd import update
from fl_tutorial.pysyft.visits import chosen

DATASET_KEY = "mnist-train"  # the share that load_share keeps on the client
SHARE_TAGS = ("#mnist", "#train")  # ... tagged so, with "#data" or "#target"
MIN_BATCH_TRAIN_ONLY = 16  # a train-only data owner trains on no smaller batch (one sample's gradient is the sample)


class PlanError(ValueError):
    """A request that a data owner does not train on; the text says why."""


# --- the coordinator's side --------------------------------------------------------------------------------

@dataclass(frozen=True)
class LocalTraining:
    """How a data owner trains a visit: what `fit`'s settings carry, in plain types (syft sends them)."""

    lr: float
    dropout: float
    batch_size: int
    prox_mu: float = 0.0  # FedProx's mu; 0 is FedAvg
    clip: Optional[float] = None  # DP-FedAvg: the L2 bound of the update (fl_tutorial/privacy/dp.py)

    def request(self, threads=None, keep=None):
        """fit's settings; threads: the client's torch threads (None: its own); keep: the round, for peer_sum."""
        return {"lr": float(self.lr), "dropout": float(self.dropout), "batch_size": self.batch_size,
                "threads": threads, "prox_mu": float(self.prox_mu), "clip": self.clip, "keep": keep}


class Share:
    """What the coordinator knows of a client's share: where it is and how many samples it holds.

    Stands in for the BaseDataset of pointers in a FederatedDataset, so that
    syft's FederatedDataLoader builds the very samplers it builds for pointers.
    """

    def __init__(self, worker, samples):
        self.data = self.targets = _Location(worker)
        self.samples = samples

    def __len__(self):
        return self.samples


class _Location:
    def __init__(self, worker):
        self.location = worker


def draw_as_federate(rule):
    """Draw what .federate() draws from torch's generator (one seed, for its DataLoader), for an IID split made
    without it: the random numbers after it, and so the batches, are then those of the course's run."""
    if rule["partition"] == "iid":
        torch.empty((), dtype=torch.int64).random_()


def plans(loader, max_batches=None, local_epochs=1, clients=None):
    """Yield (worker, passes): each visit's batches as index lists, one list per pass over the share.

    The random numbers are drawn as visits.py's visits() draws them
    (a whole shuffle per pass, the budget of --max-batches cut batch by batch), so
    the batches are those that --train-on coordinator trains on.
    """
    budget = max_batches if max_batches is not None else float("inf")
    for worker_id in chosen(loader, clients):
        if budget <= 0:
            return
        passes = []
        for _ in range(local_epochs):
            batches = [list(batch) for batch in loader.batch_samplers[worker_id]]
            taken = batches[:max(0, min(len(batches), budget))]
            budget -= len(taken)
            passes.append(taken)
        yield loader.federated_dataset[worker_id].data.location, passes


def train_visit(worker, model, passes, training, progress, threads=None, keep=None):
    """Steps 4 and 5 in one exchange: the client trains `model`'s weights on `passes`; returns its weights.

    training: a LocalTraining. threads: the torch threads the client trains with (its
    share of this machine's cores), or None to leave its own setting. keep: the round's
    key, for a client that keeps its update for fl_tutorial/privacy/peer_sum.py (then
    nothing comes back but the counts and losses: returns None). With a clipping bound
    the client clips its update to that norm first (fl_tutorial/privacy/dp.py).
    """
    passes = [list(one_pass) for one_pass in passes]  # at once: they may come as a generator (remote/together.py)
    weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    reply = worker.fit(DATASET_KEY, weights=weights, passes=passes, settings=training.request(threads, keep))
    problem = reply_problem(reply, None if keep else weights,
                            sum(len(batch) for one_pass in passes for batch in one_pass))
    if problem and problem.endswith("is not finite"):
        raise worker.error("sent weights that are not finite ({}): training diverged there (is --lr, or --dp-noise, "
                           "too large?), or the client is faulty; the run stops here".format(problem))
    if problem:
        raise worker.error("sent a training reply that does not fit the request ({}); the run stops here".format(
            problem))
    for size, loss in reply["losses"] or [(len(batch), None) for one_pass in passes for batch in one_pass]:
        progress.update(worker.id, size, loss)
    return None if keep else {name: reply["weights"][name] for name in weights}


def reply_problem(reply, weights, trained):
    """What is wrong with a client's answer to `fit`, or None: the same weights (none if it keeps its update),
    a count, a loss per batch."""
    if weights is None:
        return ("no reply" if not isinstance(reply, dict) else "weights, though it was to keep its update"
                if reply.get("weights") is not None else _counts_problem(reply, trained))
    if not isinstance(reply, dict) or not isinstance(reply.get("weights"), dict):
        return "no weights"
    got = reply["weights"]
    if set(got) != set(weights):
        return "other parameters than SimpleCNN's"
    for name, tensor in weights.items():
        if (not isinstance(got[name], torch.Tensor) or got[name].shape != tensor.shape
                or got[name].dtype != tensor.dtype):
            return "parameter {} of another shape or type".format(name)
        if not torch.isfinite(got[name]).all():
            return "parameter {} is not finite".format(name)
    return _counts_problem(reply, trained)


def _counts_problem(reply, trained):
    if not isinstance(reply.get("samples"), int) or reply["samples"] < 1:
        return "no sample count"
    losses = reply.get("losses")
    if losses is not None:
        pairs = isinstance(losses, (list, tuple)) and all(
            isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[0], int) and isinstance(e[1], float)
            for e in losses)
        if not pairs or sum(e[0] for e in losses) != trained:
            return "losses that are not one per batch"
    return None


# --- the data owner's side ---------------------------------------------------------------------------------

def check_plan(passes, samples, batch_size, train_only):
    """A plan is a list of passes, each a list of batches of distinct indices into the share.

    A train-only owner also asks that every batch be full, except the last of a
    complete pass, and at least MIN_BATCH_TRAIN_ONLY samples: no request may
    single out a few samples.
    """
    if not isinstance(passes, (list, tuple)) or not all(isinstance(p, (list, tuple)) for p in passes):
        raise PlanError("the plan is not a list of passes")
    if type(batch_size) is not int or batch_size < 1:
        raise PlanError("the batch size is not a positive integer")
    if train_only and batch_size < MIN_BATCH_TRAIN_ONLY:
        raise PlanError("a train-only data owner trains on batches of at least {} samples, not {}".format(
            MIN_BATCH_TRAIN_ONLY, batch_size))
    for one_pass in passes:
        seen = set()
        for position, batch in enumerate(one_pass):
            if not isinstance(batch, (list, tuple)) or not batch or len(batch) > batch_size:
                raise PlanError("a batch is empty, not a list, or larger than the batch size")
            if not all(type(i) is int and 0 <= i < samples for i in batch):  # not bool: a mask
                raise PlanError("a batch names a sample outside the share")
            if seen.intersection(batch) or len(set(batch)) != len(batch):
                raise PlanError("a pass names a sample twice")
            seen.update(batch)
            last_of_whole_pass = position == len(one_pass) - 1 and len(seen) == samples
            if train_only and len(batch) != batch_size and not last_of_whole_pass:
                raise PlanError("a batch of {} samples is neither full ({}) nor the last of a whole pass".format(
                    len(batch), batch_size))


def fit_share(owner, dataset_key, weights, passes, settings, train_only):
    """The data owner's side of `fit`: train on the share `owner` keeps, tagged SHARE_TAGS; {"error": ...} if not."""
    try:
        if dataset_key != DATASET_KEY:
            raise PlanError("there is no dataset {!r} here".format(dataset_key))
        shares = [owner.search(list(SHARE_TAGS) + [tag]) for tag in ("#data", "#target")]
        if any(len(found) != 1 for found in shares):
            raise PlanError("no share is loaded here (load_share first)")
        return fit(shares[0][0], shares[1][0], weights, passes, settings, train_only)
    except PlanError as error:
        return {"error": str(error)}


def fit(data, targets, weights, passes, settings, train_only):
    """Plain PyTorch SGD on the share, batch by batch as planned; the reply to syft's `fit`."""
    lr, dropout, batch_size = settings.get("lr"), settings.get("dropout"), settings.get("batch_size")
    prox_mu, clip = settings.get("prox_mu", 0.0), settings.get("clip")
    if clip is not None and not (isinstance(clip, float) and 0 < clip < float("inf")):
        raise PlanError("the settings' clipping bound is not a number > 0")
    if not isinstance(lr, float) or not lr > 0 or not isinstance(dropout, float) or not 0 <= dropout < 1:
        raise PlanError("the settings are not a learning rate and a dropout probability")
    if not isinstance(prox_mu, float) or not 0 <= prox_mu < float("inf"):
        raise PlanError("the settings' FedProx mu is not a number >= 0")
    threads = settings.get("threads")
    if threads is not None and not (type(threads) is int and 1 <= threads <= (os.cpu_count() or 1)):
        raise PlanError("the settings ask for {!r} threads; this machine has {} cores".format(threads, os.cpu_count()))
    check_plan(passes, len(targets), batch_size, train_only)
    if threads is not None:
        torch.set_num_threads(threads)
    with torch.random.fork_rng(devices=[]):  # its initial weights are replaced: draw them from no one's generator
        model = SimpleCNN(dropout=dropout)  # (a virtual owner shares the coordinator's)
    model.load_state_dict(weights)
    model.train()
    params = list(model.parameters())
    anchors = [p.detach().clone() if prox_mu else None for p in params]  # FedProx: the weights as sent
    losses = []
    for batch in (b for one_pass in passes for b in one_pass):
        index = torch.tensor(batch)
        model.zero_grad()
        loss = F.cross_entropy(model(data.index_select(0, index)), targets.index_select(0, index))
        loss.backward()
        with torch.no_grad():
            for p, anchor in zip(params, anchors):  # torch's SGD step, or FedProx's
                update(p.data, p.grad.data, lr, prox_mu, anchor)
        losses.append((len(batch), loss.item()))
    trained = dict(model.state_dict())
    if clip is not None:  # DP-FedAvg: the update is clipped here, before it leaves the client (privacy/dp.py)
        trained = dp.clip(trained, weights, clip)
    return {"weights": trained, "samples": len(targets), "losses": None if train_only else losses}
