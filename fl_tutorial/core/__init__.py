"""No syft: the model, MNIST, the partitions, client sampling, test(), reports, files and argparse types.

Shared by the PySyft script (Python 3.8, torch 1.4) and the Flower twin (Python 3.11+, torch 2.x),
so that both compute, split and report the same way. It imports nothing else of this package.
"""
