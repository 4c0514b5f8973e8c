"""Fixed point in the ring Z_(2^64): how secure and trusted aggregation carry float updates as integers.

Base 10 with PRECISION_FRACTIONAL digits after the point, for both kinds of secure aggregation:
syft's own `.fix_precision()` with VirtualWorkers (aggregation.py) and the shares sent from client
to client across processes (peer_sum.py). Each client's encoding is off by less than 10^-8 per
parameter, so the average of N clients is off by less than N x 10^-8, far below the 10^-5 asked
for, and values up to about 9 x 10^10 fit. numpy's uint64 arithmetic wraps around by definition,
so the ring needs no care.
"""
import os

import numpy as np
import torch

PRECISION_FRACTIONAL = 8  # digits after the point
PRECISION = 10 ** PRECISION_FRACTIONAL


def encode(vector):
    """float64 vector -> fixed point in Z_(2^64), as uint64."""
    return np.round(vector.numpy() * PRECISION).astype(np.int64).view(np.uint64)


def decode(ring):
    """uint64 (a sum in Z_(2^64)) -> float64 vector."""
    return torch.from_numpy(ring.view(np.int64).astype(np.float64) / PRECISION)


def split(ring, parts):
    """`parts` additive shares of `ring`: parts - 1 uniformly random (from the OS), the last what makes them add up."""
    shares = [np.frombuffer(os.urandom(8 * ring.size), dtype=np.uint64).copy() for _ in range(parts - 1)]
    last = ring.copy()
    for share in shares:
        last -= share  # wraps around
    return shares + [last]


def add(shares):
    total = np.zeros_like(shares[0])
    for share in shares:
        total += share
    return total


def to_wire(ring):
    """A share as syft sends it: an int64 tensor (torch.save's LongStorage, which the wire accepts)."""
    return torch.from_numpy(ring.view(np.int64).copy())


def from_wire(tensor, size):
    """A share as it arrives: an int64 tensor of `size` entries, as uint64; None for anything else."""
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.int64 or tensor.dim() != 1 or len(tensor) != size:
        return None
    return tensor.numpy().view(np.uint64).copy()
