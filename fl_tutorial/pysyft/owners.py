"""Data owners as syft knows them: linked to the server (and, for secure sums, to each other), and their failures.

syft 0.2.6's `VirtualWorker(hook, id=...)` links every new worker with every worker
already known (`auto_add`): O(N^2) messages-free but quadratic bookkeeping for N
clients, and every client then knows every other. The script creates them with
`auto_add=False` and links each to the server alone; secure aggregation (Part 10)
links the clients with each other, since the shares go from client to client.
"""


class Owners(list):
    """The data owners, in client order; `aggregator`: --aggregation trusted's aggregator process, if any."""

    aggregator = None


class ClientError(RuntimeError):
    """A data owner cannot be reached, stopped answering, or did not train; one line that names it."""


def link_to_server(hook, workers):
    """Each worker and the server (the hook's local worker) know each other; the workers know nobody else."""
    for worker in workers:
        hook.local_worker.add_worker(worker)
        worker.add_worker(hook.local_worker)
    return Owners(workers)


def link_to_each_other(workers):
    """Every worker knows every other one (secure aggregation's shares go from client to client)."""
    for worker in workers:
        worker.add_workers(workers)
    return workers
