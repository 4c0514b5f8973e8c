"""Who holds which training samples: the course's IID split and two non-IID ones, and what the clients are called.

Each function returns one index array per client. Every sample goes to exactly
one client, and a seed fixes the split. The random draws come from numpy's
RandomState, never torch, so a partition never shifts torch's random numbers
for shuffling and dropout.
"""
import math

import numpy as np


class PartitionError(ValueError):
    """The data cannot be split as asked; the message names the flag to change."""


def check_enough_samples(n_clients, n_samples):
    if n_clients > n_samples:
        raise PartitionError("--num-clients {}: more clients than the {} training samples".format(n_clients, n_samples))


def like_federate(n_samples, n_clients):
    """The split `.federate(workers)` makes: consecutive chunks of ceil(n / clients) samples."""
    check_enough_samples(n_clients, n_samples)
    size = math.ceil(n_samples / n_clients)
    parts = [np.arange(start, min(start + size, n_samples)) for start in range(0, n_samples, size)]
    if len(parts) != n_clients:
        raise PartitionError(
            "--num-clients {}: .federate() splits {} samples into chunks of {}, which leaves "
            "only {} clients with data; choose another number of clients".format(
                n_clients, n_samples, size, len(parts)))
    return parts


def shards(labels, n_clients, shards_per_client, seed):
    """McMahan et al. (2017): sort by label, cut into equal shards, deal K shards to each client."""
    n_shards = n_clients * shards_per_client
    if n_shards > len(labels):
        raise PartitionError(
            "--shards-per-client {}: {} clients x {} shards is more than the {} training samples".format(
                shards_per_client, n_clients, shards_per_client, len(labels)))
    by_label = np.argsort(labels, kind="stable")
    pieces = np.array_split(by_label, n_shards)
    dealt = np.random.RandomState(seed).permutation(n_shards)
    return [np.sort(np.concatenate([pieces[s] for s in dealt[c::n_clients]])) for c in range(n_clients)]


def dirichlet(labels, n_clients, alpha, seed, attempts=100):
    """Each class is split across clients in proportions drawn from Dirichlet(alpha).

    Small alpha: each client sees few classes; large alpha: close to IID. Draws
    again (deterministically) until every client has at least one sample.
    """
    check_enough_samples(n_clients, len(labels))
    rng = np.random.RandomState(seed)
    for _ in range(attempts):
        owned = [[] for _ in range(n_clients)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            cuts = (np.cumsum(rng.dirichlet([alpha] * n_clients))[:-1] * len(members)).astype(int)
            for client, part in enumerate(np.split(members, cuts)):
                owned[client].append(part)
        parts = [np.sort(np.concatenate(p)) for p in owned]
        if all(len(p) for p in parts):
            return parts
    raise PartitionError(
        "--dirichlet-alpha {}: after {} draws some client still had no samples; "
        "use a larger alpha or fewer clients".format(alpha, attempts))


def flag(name, value=None):
    """How the script's command line writes a setting: --name, or --name value."""
    return "--" + name if value is None else "--{} {}".format(name, value)


def rule(partition, num_clients, seed, shards_per_client=None, dirichlet_alpha=None, spell=flag):
    """What decides the split, checked and completed: the same on the coordinator, on every client and in
    the Flower twin. A dict of plain types, so that syft can send it to a client process.

    Non-IID without --dirichlet-alpha deals 2 label shards per client unless told otherwise. A PartitionError
    names the settings as `spell` writes them (the script's flags by default; the twin its run config keys).
    """
    if partition == "iid" and (shards_per_client or dirichlet_alpha):
        raise PartitionError("{} and {} need {}".format(
            spell("shards-per-client"), spell("dirichlet-alpha"), spell("partition", "noniid")))
    if shards_per_client and dirichlet_alpha:
        raise PartitionError("choose one of {} and {}".format(spell("shards-per-client"), spell("dirichlet-alpha")))
    if partition == "noniid" and not dirichlet_alpha:
        shards_per_client = shards_per_client or 2
    return {"partition": partition, "num_clients": num_clients, "seed": seed,
            "shards_per_client": shards_per_client, "dirichlet_alpha": dirichlet_alpha}


def split(labels, rule):
    """One index array per client, as `rule` says: .federate()'s chunks, label shards or Dirichlet."""
    if rule["partition"] == "iid":
        return like_federate(len(labels), rule["num_clients"])
    if rule["dirichlet_alpha"] is not None:
        return dirichlet(labels, rule["num_clients"], rule["dirichlet_alpha"], rule["seed"])
    return shards(labels, rule["num_clients"], rule["shards_per_client"], rule["seed"])


def client_name(index):
    """Share `index` (from 0) belongs to client1, client2, ...: the one place that names the clients."""
    return "client{}".format(index + 1)


def client_names(num_clients):
    return [client_name(index) for index in range(num_clients)]


def histogram(labels):
    """Sample count and the 10 label counts of one client's share."""
    return {"samples": int(len(labels)), "labels": np.bincount(labels, minlength=10).tolist()}


def describe(labels, parts, names):
    """Per client: sample count and the 10 label counts (for the start-up table and metrics)."""
    return [dict(client=name, **histogram(labels[part])) for name, part in zip(names, parts)]


def table(description):
    """The start-up table: one line per client."""
    lines = ["{:<9} {:>7}   {}".format("client", "samples", " ".join("{:>5}".format(d) for d in range(10)))]
    for row in description:
        lines.append("{:<9} {:>7}   {}".format(row["client"], row["samples"],
                                                " ".join("{:>5}".format(c) for c in row["labels"])))
    return "\n".join(lines)
