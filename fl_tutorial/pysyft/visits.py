"""Walk a FederatedDataLoader as *visits*: a client, and the batches the model trains on there.

syft 0.2.6's FederatedDataLoader hands out every batch of client1, then every
batch of client2. The course sends the model for each batch and gets it back
after it; that round trip, and syft building each batch one sample (one remote
command) at a time, make up most of the federated overhead.

`visits()` keeps the loader's own samplers, so the batches, their order and the
random numbers drawn for them are exactly the loader's. It only changes how
often the model travels and how a batch is cut out of the client's data.
"""
import torch


def visits(loader, every_batch=False, max_batches=None, local_epochs=1, clients=None):
    """Yield (worker, batches) pairs; the model visits `worker` once per pair.

    every_batch=True is the course: each batch is its own visit, assembled by
    syft's FederatedDataLoader itself. Otherwise one visit covers all of a
    client's consecutive batches (`local_epochs` passes over its data, for
    FedAvg), each cut with one remote slice.
    max_batches stops the epoch early (quick tries, benchmarks); clients, if
    given, are the ids of the only clients visited (this round's sample).
    """
    budget = [max_batches if max_batches is not None else float("inf")]
    if every_batch:
        for data, target in loader:
            if budget[0] <= 0:
                return
            budget[0] -= 1
            yield data.location, [(data, target)]
        return
    for worker_id in chosen(loader, clients):
        if budget[0] <= 0:
            return
        dataset = loader.federated_dataset[worker_id]
        passes = (_slices(dataset, loader.batch_samplers[worker_id], budget) for _ in range(local_epochs))
        yield dataset.data.location, (batch for one_pass in passes for batch in one_pass)


def chosen(loader, clients=None):
    """The loader's client ids, in its order; only those in `clients` when given."""
    return [w for w in loader.workers if clients is None or w in clients]


def _slices(dataset, batch_sampler, budget):
    """The client's batches: one remote shuffle per visit, then one remote slice per batch."""
    # Drawing the whole shuffle here is what the loader does on a client's first batch.
    batches = list(batch_sampler)
    order = torch.tensor([i for batch in batches for i in batch]).send(dataset.data.location)
    data, targets = dataset.data.index_select(0, order), dataset.targets.index_select(0, order)
    start = 0
    for batch in batches:
        if budget[0] <= 0:
            return
        budget[0] -= 1
        yield data[start:start + len(batch)], targets[start:start + len(batch)]
        start += len(batch)
