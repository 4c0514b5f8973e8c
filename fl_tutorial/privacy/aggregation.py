"""How FedAvg's server gets the weighted average of the clients' models (`--aggregation`).

- server: every updated copy comes back, and the server averages them (the
  default, and what the course's Part 06 style of FedAvg does). The server sees
  every client's update.
- trusted: PySyft's Part 04. The copies move from the clients to a separate
  worker, `aggregator`, which averages them; the server gets only the average.
  The aggregator sees every update: it must be trusted.
- secure: PySyft's Part 10. Each client scales its copy by its public weight
  (its share of the samples), encodes it in fixed point and splits it into
  additive secret shares, one per client (`.fix_precision().share(...)`). The
  shares are added where they lie, and only the sum, the weighted average, is
  ever reconstructed and decoded. No single update is seen by anybody, the server
  included, unless the other clients (or the crypto provider with a client) collude.
  Fixed point: fixed_point.py's precision, in syft's ring Z_(2^64).

These take the clients' copies as syft leaves them (pointers, or weights sent back)
and never create a worker: the caller gives trusted's aggregator and secure's crypto
provider. Across processes, secure and trusted are peer_sum.py's.
"""
import secrets
import time

import torch

from fl_tutorial.privacy import dp
from fl_tutorial.privacy.fixed_point import PRECISION_FRACTIONAL


def weighted_average(updates):
    """[(samples, state_dict)] -> the state_dict averaged with each client's share of the samples as weight."""
    total = sum(n for n, _ in updates)
    return {name: sum(state[name] * (n / total) for n, state in updates) for name in updates[0][1]}


def _weights(updates):
    total = sum(n for n, _ in updates)
    return [n / total for n, _ in updates]


def _parameters(model):
    """The model's parameters by name; FedAvg here averages parameters, and SimpleCNN has no buffers."""
    if list(model.buffers()):
        raise ValueError("this aggregation averages parameters only; the model has buffers")
    return dict(model.named_parameters())


class AggregationError(RuntimeError):
    """The average cannot be made as asked; the message says why and what to change."""


class Aggregation:
    """Base: one average per round, timed for the metrics."""

    seconds = 0.0

    def next_round(self):
        """The key the round's clients keep their updates under (fit's settings["keep"]); None: they send them."""
        return None

    def average(self, updates, start):
        """updates: [(samples, the client's copy)] -> the averaged state_dict, on the server.

        A copy is a model on its client, the weights it sent back (--train-on client), or the
        client itself where it keeps its update (peer_sum.py). start: the round's weights.
        """
        began = time.perf_counter()
        with torch.no_grad():
            state = self._average(updates, start)
        self.seconds = time.perf_counter() - began
        return state


class ServerAverage(Aggregation):
    """--aggregation server: each copy comes back to the server, which averages them.

    A copy is a model on its client, or (--train-on client) the weights the client sent back.
    With DP-FedAvg (fl_tutorial/privacy/dp.py) the clients have clipped their updates; every copy
    weighs 1/m, and the server adds Gaussian noise of std Z*C/m to the average.
    """

    def __init__(self, noise_multiplier=None, clip=None, noise_seed=None):
        self.noise_multiplier, self.clip, self.noise_seed = noise_multiplier, clip, noise_seed

    def _average(self, updates, start):
        states = [(1 if self.clip is not None else n, model if isinstance(model, dict) else model.get().state_dict())
                  for n, model in updates]
        average = weighted_average(states)
        if self.noise_multiplier:
            std = dp.server_std(self.noise_multiplier, self.clip, len(updates))
            names = list(average)
            noisy = dp.flatten(average, names) + dp.noise((sum(t.numel() for t in average.values()),), std,
                                                          dp.generator(self.noise_seed))
            average = dp.unflatten(noisy, average)
        return average


class TrustedAggregator(Aggregation):
    """--aggregation trusted (Part 04): the copies meet at `aggregator`; only their average comes back."""

    def __init__(self, aggregator):
        self.aggregator = aggregator

    def _average(self, updates, start):
        for _, model in updates:
            model.move(self.aggregator)
        params = [_parameters(model) for _, model in updates]
        return {name: sum(p[name].data * w for p, w in zip(params, _weights(updates))).get()
                for name in params[0]}


class SecureAggregation(Aggregation):
    """--aggregation secure (Part 10): additive secret sharing among the clients; only the sum is decoded."""

    def __init__(self, crypto_provider):
        self.crypto_provider = crypto_provider

    def _average(self, updates, start):
        if len(updates) < 2:  # --max-batches can end a round before the second client trains
            raise AggregationError(
                "--aggregation secure: only {} trained in this round (--max-batches ended it early), and a "
                "secure sum of one update is that update. Allow more batches, or use --aggregation server".format(
                    next(updates[0][1].parameters()).location.id))
        clients = [next(model.parameters()).location for _, model in updates]
        params = [_parameters(model) for _, model in updates]
        averaged = {}
        # syft 0.2.6 draws the shares from torch's random generator. A fork of it, seeded from the
        # operating system, makes them unpredictable and leaves the training's own random numbers
        # (shuffling, dropout) exactly those of --aggregation server.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(secrets.randbits(63))
            for name in params[0]:
                shared = [self.share(p[name].data * w, clients) for p, w in zip(params, _weights(updates))]
                averaged[name] = self.decode(sum(shared[1:], shared[0]))
        return averaged

    def share(self, remote_tensor, clients):
        """On its client: encode in fixed point, split into one share per client; the server gets pointers."""
        return (remote_tensor.fix_precision(precision_fractional=PRECISION_FRACTIONAL)
                .share(*clients, crypto_provider=self.crypto_provider).get())

    @staticmethod
    def decode(shared_sum):
        """Reconstruct the sum from its shares and turn it back into floats: the only decoding there is."""
        return shared_sum.get().float_precision()
