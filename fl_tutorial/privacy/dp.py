"""Differentially private FedAvg (McMahan et al. 2018), with fixed clipping as Flower's DP strategies define it.

- `--dp-clip C`: each client clips its model update (its weights minus the
  round's start) to L2 norm C, on the client, before anything leaves it.
- `--dp-noise Z`: Gaussian noise of standard deviation Z*C/m goes onto the
  average of a round's m clipped updates; by the server (`--aggregation server`),
  or, with `--aggregation secure|trusted`, as each client's part of it: each adds
  noise of variance (Z*C)^2/m to its clipped update, so no one sees a noiseless sum.
  With DP the average weighs every client 1/m (FedAvg's sample-count weights
  would let a large client move the average by more than C/m).
- The privacy spent is computed by Google's dp-accounting (its RDP accountant),
  never by a formula written here. Neighbouring runs differ in one client's data
  (replace-one): that client's clipped update can move the sum of the m updates
  by up to 2C, so the accountant sees a Gaussian of noise multiplier Z/2, on a
  sample of m of the N clients drawn without replacement (--clients-per-round;
  every client every round when it is absent).
"""
import math
import secrets
import sys
from importlib import metadata

import torch

DEFAULT_DELTA = 1e-5


def flatten(state, names):
    """The state_dict's tensors, in `names` order, as one flat float64 vector (updates are measured in it)."""
    return torch.cat([state[name].detach().reshape(-1).double() for name in names])


def unflatten(vector, like):
    """A flat vector back into a state_dict shaped and typed as `like`."""
    state, start = {}, 0
    for name, tensor in like.items():
        state[name] = vector[start:start + tensor.numel()].reshape(tensor.shape).to(tensor.dtype)
        start += tensor.numel()
    return state


def clip(weights, start, bound):
    """The client's side of --dp-clip: weights whose update (weights - start) has L2 norm at most `bound`."""
    names = list(start)
    origin = flatten(start, names)
    update = flatten(weights, names) - origin
    margin = 0.0
    while update.norm().item() > bound:  # rounding to float32 can leave it a hair above: shrink a little more
        weights = unflatten(origin + update * (bound / update.norm().item() * (1 - margin)), start)
        update, margin = flatten(weights, names) - origin, margin * 10 or 1e-7
    return weights


def generator(seed=None):
    """A torch generator for DP noise: seeded from the operating system (unpredictable) unless a test gives a seed.

    Its own generator: the noise never moves the training's random numbers.
    """
    gen = torch.Generator()
    gen.manual_seed(secrets.randbits(63) if seed is None else seed)
    return gen


def noise(shape, std, gen=None):
    """Gaussian noise of standard deviation `std` (float64)."""
    if std == 0:
        return torch.zeros(shape, dtype=torch.float64)
    return torch.randn(shape, generator=gen or generator(), dtype=torch.float64) * std


def server_std(noise_multiplier, clip_bound, m):
    """--aggregation server: the noise on the average of m clipped updates, Z*C/m."""
    return noise_multiplier * clip_bound / m


def client_std(noise_multiplier, clip_bound, m):
    """--aggregation secure|trusted: each of the m clients adds std Z*C/sqrt(m), so the average gets Z*C/m."""
    return noise_multiplier * clip_bound / math.sqrt(m)


class Accountant:
    """ε after each round, from dp-accounting's RDP accountant (replace-one neighbours, see the module's text).

    num_clients: N; per_round: m (the clients a round trains, drawn without replacement).
    """

    def __init__(self, noise_multiplier, delta, num_clients, per_round):
        import dp_accounting  # here: it and scipy take half a second to import, for runs with --dp-clip only
        from dp_accounting.rdp import rdp_privacy_accountant

        self.delta, self.rounds = delta, 0
        self._new = lambda: rdp_privacy_accountant.RdpAccountant(
            neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
        gaussian = dp_accounting.GaussianDpEvent(noise_multiplier / 2)  # sensitivity 2C (replace-one)
        self.event = (gaussian if per_round >= num_clients else
                      dp_accounting.SampledWithoutReplacementDpEvent(num_clients, per_round, gaussian))
        self.noiseless = noise_multiplier == 0

    def epsilon(self, rounds):
        """ε at this delta after `rounds` rounds (inf without noise)."""
        if self.noiseless:
            return math.inf
        accountant = self._new()
        accountant.compose(self.event, rounds)
        return accountant.get_epsilon(self.delta)

    def step(self):
        """One more round: returns ε so far."""
        self.rounds += 1
        return self.epsilon(self.rounds)

    def describe(self):
        """What the metrics JSON says about the accounting, beside each round's epsilon."""
        return {"delta": self.delta, "event": str(self.event),
                "accountant": "dp-accounting {} RDP, replace-one neighbours".format(metadata.version("dp-accounting"))}


def report(epsilon, delta, rounds, stream=None):
    """Print the privacy spent after `rounds` rounds; returns epsilon for the metrics JSON (None: no bound)."""
    finite = math.isfinite(epsilon)
    print("DP-FedAvg: epsilon = {} at delta = {:g} after {} round{}{}".format(
        "{:.3f}".format(epsilon) if finite else "inf", delta, rounds, "" if rounds == 1 else "s",
        "" if finite else " (no noise: clipping alone bounds nothing)"), file=stream or sys.stdout, flush=True)
    return epsilon if finite else None
