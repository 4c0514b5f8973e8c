"""Which clients train in a FedAvg round (`--clients-per-round M`): the paper's C·K, drawn afresh each round.

McMahan et al. (2017) pick a random fraction C of the K clients at the start
of every round, without replacement. The draws come from their own numpy
generator, seeded by --seed, so that a run is reproducible and the sampling
never shifts torch's random numbers (shuffling, dropout) nor the partition's.
"""
import numpy as np

from fl_tutorial.core.partition import flag

STREAM = 0x5A3  # mixed into the seed: the partition draws from RandomState(seed) too, and must not share draws


def problem(per_round, num_clients, spell=flag):
    """None if `per_round` clients a round (None: all) can be drawn from `num_clients`, else the message.

    The script and the Flower twin both ask this; `spell` writes the setting their way (partition.rule's).
    """
    if per_round is not None and per_round > num_clients:
        return "{}: there are only {} clients".format(spell("clients-per-round", per_round), num_clients)
    return None


class ClientSampler:
    """Draws `per_round` of `names` for each round, uniformly and without replacement; None: all of them."""

    def __init__(self, names, per_round=None, seed=1):
        self.names = list(names)
        self.per_round = len(self.names) if per_round is None else per_round
        if not 1 <= self.per_round <= len(self.names):
            raise ValueError("per_round must be 1 to {}, not {}".format(len(self.names), per_round))
        self.rng = np.random.RandomState([seed, STREAM])

    @property
    def fraction(self):
        """The paper's C: the share of the clients in each round (the accountant's sampling rate)."""
        return self.per_round / len(self.names)

    def next_round(self):
        """The names of this round's clients, in the clients' own order (so that the loader's order holds)."""
        if self.per_round == len(self.names):
            return list(self.names)
        chosen = self.rng.choice(len(self.names), self.per_round, replace=False)
        return [self.names[i] for i in sorted(chosen)]
