"""The task, apart from Flower: the tutorial's model, a client's share of MNIST, plain PyTorch train and test.

Nothing here knows about Flower; client_app.py and server_app.py call it.
The model, the split of the training set and the MNIST files come from the
PySyft tutorial's own code (fl_tutorial/), so the same settings give the same
SimpleCNN and the same samples on every client.
"""
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from fl_tutorial.core import evaluation, mnist, partition
from fl_tutorial.core.model import SimpleCNN  # noqa: F401  (re-exported: the apps build it from here)


class DeviceError(RuntimeError):
    """A device was asked for that this machine's torch cannot use."""


def pick_device(name: str) -> torch.device:
    """auto: CUDA, then Apple's MPS, then the CPU; cpu, cuda or mps: that one, or DeviceError."""
    usable = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if usable[d]))
    if not usable[name]:
        why = ", built without CUDA" if name == "cuda" and not torch.version.cuda else ""
        raise DeviceError(f'device {name} is not available here (torch {torch.__version__}{why}); use device "auto" '
                          'or "cpu"')
    return torch.device(name)


@functools.lru_cache(maxsize=1)
def load_share(data_dir: str, rule_items: tuple, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This client's share of the training set, as the script's clients cut it: (images, labels).

    rule_items is Settings.rule() as a tuple of pairs (hashable, for the cache: a
    simulated client keeps its share between rounds).
    """
    images, labels = mnist.load(data_dir, train=True)
    rule = dict(rule_items)
    if not 0 <= index < rule["num_clients"]:
        raise partition.PartitionError(f"partition-id {index} is outside 0 to {rule['num_clients'] - 1}")
    share = torch.from_numpy(partition.split(labels.numpy(), rule)[index])
    return images.index_select(0, share), labels.index_select(0, share)


def round_seed(seed: int, server_round: int, index: int) -> int:
    """The seed of one client's round: its batches and dropout, whatever process or machine runs it."""
    return (seed * 1_000_003 + server_round * 1_009 + index) % 2 ** 32


def batches(n: int, batch_size: int, generator: torch.Generator,
            max_batches: int | None = None) -> Iterator[torch.Tensor]:
    """Index tensors of one pass over n samples, in the order of torch's RandomSampler(generator=generator)."""
    order = torch.tensor(list(torch.utils.data.RandomSampler(range(n), generator=generator)))
    for count, start in enumerate(range(0, n, batch_size)):
        if max_batches is not None and count >= max_batches:
            return
        yield order[start:start + batch_size]


def train(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int, lr: float,
          batch_size: int, seed: int, device: torch.device, max_batches: int | None = None,
          prox_mu: float = 0.0) -> float:
    """Plain PyTorch SGD, as the script's clients run it; returns the mean training loss per sample.

    With prox_mu, FedProx (Li et al. 2020): the local objective gains (mu/2)·||w - w_round||², w_round being
    the weights as received; its gradient mu·(w - w_round) joins each step's, in the script's order
    (fl_tutorial/pysyft/pointer_sgd.py), so that both compute the same steps.
    """
    torch.manual_seed(seed)  # dropout
    generator = torch.Generator().manual_seed(seed)  # the order of the samples
    model.to(device).train()
    images, labels = images.to(device), labels.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    anchors = [p.detach().clone() for p in model.parameters()] if prox_mu else []
    loss_sum, seen = 0.0, 0
    for _ in range(epochs):
        for idx in batches(len(labels), batch_size, generator, max_batches):
            idx = idx.to(device)
            data, target = images.index_select(0, idx), labels.index_select(0, idx)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(data), target)
            loss.backward()
            if prox_mu:  # FedProx's proximal term
                for p, anchor in zip(model.parameters(), anchors, strict=True):
                    p.grad.add_(p.detach(), alpha=prox_mu).add_(anchor, alpha=-prox_mu)
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            seen += len(idx)
    return loss_sum / max(seen, 1)


def test(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
         device: torch.device) -> tuple[float, float, list[float]]:
    """The script's test() on the server's test set, in slices of batch_size: the same sums and the same
    `Test set:` line (fl_tutorial/core/evaluation.py). Returns loss, accuracy, per-class accuracy."""
    model.to(device).eval()
    score = evaluation.Score()
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            data, target = images[start:start + batch_size].to(device), labels[start:start + batch_size].to(device)
            score.add(model(data), target)
    return score.report()
