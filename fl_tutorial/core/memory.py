"""Will a batch fit in memory? Asked before training, so that the answer is a message, not the OOM killer.

One training step keeps every layer's output for the backward pass, then
gradients and temporaries. The outputs are measured once, with forward hooks on
a batch of two, and scaled to the batch size. Measured on SimpleCNN (peak memory
at batch 1024 and 4096): a training step takes 1.35 times the outputs; the check
assumes 2, to stay on the safe side. The test batches need the outputs only.
"""
import psutil
import torch

STEP_FACTOR = 2  # a training step's memory per image, in layer outputs (measured: 1.35)
HEADROOM = 0.8  # use at most this share of the memory that is available
CLIENT_PROCESS_BYTES = 600 * 10 ** 6  # measured: a client process on MNIST peaks at about 570 MB


def activation_bytes_per_sample(model, sample_shape=(1, 28, 28)):
    """Bytes of all layer outputs for one sample, measured on a batch of two (on a throwaway copy)."""
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, out: sizes.append(out.numel() * out.element_size()))
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # dropout draws: leave the run's RNG alone
            model.eval()(torch.zeros(2, *sample_shape))
    finally:
        for hook in hooks:
            hook.remove()
    return sum(sizes) // 2 + 4 * int(torch.tensor(sample_shape).prod())


def available_bytes():
    """Memory available to this process: the system's, or the container's limit if that is lower."""
    available = psutil.virtual_memory().available
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit.isdigit():
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(0, available)


def gib(n):
    return "{:.1f} GB".format(n / 1e9) if n >= 1e9 else "{:.1f} MB".format(n / 1e6)


def check(make_model, batch_size, test_batch_size, available=None):
    """None if both batch sizes fit, else one sentence: what is needed, what there is, what fits."""
    available = available_bytes() if available is None else available
    with torch.random.fork_rng(devices=[]):  # building a model draws random numbers: not the run's
        model = make_model()
    per_sample = activation_bytes_per_sample(model)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    budget = available * HEADROOM - 4 * params  # the model, its gradients, the client's copy, the average
    for flag, size, factor, what in (("--batch-size", batch_size, STEP_FACTOR, "one training batch"),
                                     ("--test-batch-size", test_batch_size, 1, "one test batch")):
        needed = size * per_sample * factor
        if needed > budget:
            fits = max(1, int(budget // (per_sample * factor)))
            return ("{} {}: {} of {} needs about {} ({} per image), but {} is available. "
                    "{} {} or less fits.".format(flag, size, what, type(model).__name__, gib(needed),
                                                 gib(per_sample * factor), gib(available), flag, _round_down(fits)))
    return None


def train_batch(batch_size, largest_share):
    """The training batch size: batch_size, or with "full" (FedSGD) the largest client's share."""
    return largest_share if batch_size == "full" else batch_size


def batch_problem(make_model, batch_size, test_batch_size, largest_share, available=None):
    """None if a training and a test batch fit in memory, else the message that says what fits.

    The script and the Flower twin ask it before any client starts; batch_size may be "full".
    """
    problem = check(make_model, train_batch(batch_size, largest_share), test_batch_size, available)
    if problem and batch_size == "full":
        return "--batch-size full: the largest share, {} samples, is one batch. {}".format(largest_share, problem)
    return problem


def check_client_processes(n, available=None):
    """None if n client processes (--workers websocket, started here) fit in memory, else why not."""
    available = available_bytes() if available is None else available
    fits = int(available * HEADROOM // CLIENT_PROCESS_BYTES)
    if n <= fits:
        return None
    return ("--num-clients {}: starting {} client processes on this machine needs about {} ({} each), but {} is "
            "available. Start at most {} here, or run clients on other machines (--connect).".format(
                n, n, gib(n * CLIENT_PROCESS_BYTES), gib(CLIENT_PROCESS_BYTES), gib(available), max(fits, 1)))


def _round_down(n):
    """A friendly batch size: n rounded down to a power of two, or to two significant digits."""
    if n < 1024:
        return 1 << (n.bit_length() - 1)
    digits = len(str(n)) - 2
    return n // 10 ** digits * 10 ** digits
