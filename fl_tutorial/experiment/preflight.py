"""What would fail later fails now, before any client exists: the data, the split, memory.

A typo costs seconds, not a training run: MNIST is found (or downloaded and
verified), the split the flags ask for is made once on the labels alone, and the
largest batch, the test batch and the client processes this run would start are
weighed against the memory there is. Each problem is one message.
"""
import sys

from fl_tutorial.core import memory, mnist, partition
from fl_tutorial.core.model import SimpleCNN


def check_it_fits(settings, usage_error):
    """MNIST in settings.data_dir, a split that can be made, batches and processes that fit in memory.

    usage_error(message): argparse's parser.error (exit status 2). Missing data that cannot be
    fetched ends the run with one line (exit status 1).
    """
    try:
        mnist.ensure(settings.data_dir)  # download and verify, if needed (clients this run starts read it too)
    except mnist.DataError as error:
        sys.exit("error: {}".format(error))
    largest_share = None
    if not settings.connect:  # clients started elsewhere have their own data, and say so themselves
        labels = mnist.train_labels(settings.data_dir)
        try:
            partition.check_enough_samples(settings.num_clients, len(labels))
            largest_share = max(len(share) for share in partition.split(labels, settings.rule))
        except partition.PartitionError as error:
            usage_error(str(error))
    problem = batch_problem(settings, largest_share or 1)
    if not problem and settings.workers == "websocket" and not settings.connect:
        problem = memory.check_client_processes(settings.num_clients)
    if problem:
        usage_error(problem)


def train_batch(settings, largest_share):
    """The training batch size: --batch-size, or with --batch-size full the largest share (FedSGD)."""
    return memory.train_batch(settings.batch_size, largest_share)


def batch_problem(settings, largest_share):
    """None if a training and a test batch fit in memory, else the message that says what fits."""
    return memory.batch_problem(lambda: SimpleCNN(dropout=settings.dropout), settings.batch_size,
                                settings.test_batch_size, largest_share)
