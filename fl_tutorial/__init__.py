"""The package behind federated_learning.py, in layers: each imports only the layers below it.

    experiment/  the script's modes beyond the course, composed from its steps (worker/: python -m fl_tutorial.worker)
    remote/      clients in their own processes: the data owner's worker, the coordinator's clients, tokens and TLS
    pysyft/      syft 0.2.6 in one process: the environment, what syft may unpickle, visits, training on the owner
    privacy/     how the average is made: server, trusted, secure aggregation, DP-FedAvg (tensors in, tensors out)
    core/        no syft: model, MNIST, partitions, sampling, memory, test(), reports, files, argparse types

core/ runs on Python 3.8 and 3.11+, torch 1.4 and 2.x: it is all that the Flower twin (flower/) installs.
`make lint` checks the layers (import-linter, [tool.importlinter] in pyproject.toml).
"""
