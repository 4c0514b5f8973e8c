"""Speed benchmark: plain PyTorch, the course's federated loop, and this project's default loop.

    make bench ARGS="--data-dir DIR"                    one full epoch each (~10 min on 2 cores)
    make bench ARGS="--data-dir DIR --max-batches 100"  a quick look

Each loop runs in its own process, on the same data and settings, so that its
time and peak memory are its own. Prints a markdown table.
"""
import argparse
import contextlib
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

from fl_tutorial.core.cli import positive_float, positive_int  # noqa: E402
from fl_tutorial.core.model import SimpleCNN  # noqa: E402

LOOPS = {
    "plain": "(a) plain PyTorch",
    "plain-tensors": "(a2) plain PyTorch, pre-normalised tensors",
    "every-batch": "(b) course loop, `--sync every-batch`",
    "per-visit": "(c) default loop, `--sync per-visit`",
    "websocket": "(d) default loop, `--workers websocket` (2 client processes)",
    "fedavg-in-turn": "(e1) 1 FedAvg round, 2 websocket clients, `--train-on coordinator --in-turn`",
    "fedavg-together": "(e2) 1 FedAvg round, 2 websocket clients, `--train-on coordinator`, at once",
    "client-in-turn": "(f1) 1 FedAvg round, 2 websocket clients, `--train-on client --in-turn`",
    "client-together": "(f2) 1 FedAvg round, 2 websocket clients, `--train-on client`, at once (the default)",
    "plain-paper": "(a3) plain PyTorch, pre-normalised tensors, batches of 10",
    "paper-round": "(g) 1 FedAvg round, 100 virtual clients, 10 sampled, E = 5, B = 10, `--train-on client`",
}
PAPER = ("plain-paper", "paper-round")  # the FedAvg paper's scale: their own table, batches of 10
PAPER_STEPS = 3000  # one round of (g): 10 clients x 600 samples x 5 epochs / 10 per batch
WEBSOCKET = ["--workers", "websocket"]
FLAGS = {  # what each loop passes to federated_learning.py
    "every-batch": ["--sync", "every-batch"],
    "per-visit": [],
    "websocket": WEBSOCKET,
    "fedavg-in-turn": WEBSOCKET + ["--strategy", "fedavg", "--train-on", "coordinator", "--in-turn"],
    "fedavg-together": WEBSOCKET + ["--strategy", "fedavg", "--train-on", "coordinator"],
    "client-in-turn": WEBSOCKET + ["--strategy", "fedavg", "--train-on", "client", "--in-turn"],
    "client-together": WEBSOCKET + ["--strategy", "fedavg", "--train-on", "client"],
    "paper-round": ["--strategy", "fedavg", "--num-clients", "100", "--clients-per-round", "10", "--local-epochs", "5",
                    "--train-on", "client"],
}


def batch_size(args, loop):
    return 10 if loop in PAPER else args.batch_size


def max_batches(args, loop):
    """--max-batches, and for the paper's scale at most one round's 3,000 steps."""
    if loop in PAPER:
        return min(args.max_batches or PAPER_STEPS, PAPER_STEPS)
    return args.max_batches


def run_plain(args, pre_normalised=False, loop="plain"):
    """The PyTorch MNIST example's loop with SimpleCNN, the same seed and SGD settings.

    pre_normalised feeds it the tensors the default federated loop uses (no
    per-image transform), to compare the training loops like for like.
    """
    import torch
    import torch.nn.functional as F
    from torchvision import datasets

    from fl_tutorial.core import mnist

    torch.manual_seed(args.seed)
    if pre_normalised:
        train_set = torch.utils.data.TensorDataset(*mnist.normalized(args.data_dir))
    else:
        train_set = datasets.MNIST(args.data_dir, train=True, transform=mnist.TRANSFORM)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size(args, loop), shuffle=True)
    model = SimpleCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    start, batches = time.perf_counter(), 0
    model.train()
    for data, target in train_loader:
        optimizer.zero_grad()
        F.cross_entropy(model(data), target).backward()
        optimizer.step()
        batches += 1
        if batches == max_batches(args, loop):
            break
    train_s = time.perf_counter() - start
    return {"federate_s": None, "train_s": train_s, "batches": batches, "accuracy": evaluate(args, model),
            "messages": None}


@contextlib.contextmanager
def federated_run(argv):
    """The script's settings, hook and first two steps for these flags, as its run makes them; a context manager
    that yields (settings, hook, workers, federated dataset, seconds they took) and stops any client process
    on the way out."""
    import torch

    import federated_learning as fl
    from fl_tutorial.experiment import options, owners

    settings = options.parse(fl.build_parser(), argv)
    torch.manual_seed(settings.seed)
    hook = fl.sy.TorchHook(torch)
    with contextlib.ExitStack() as cleanup:
        start = time.perf_counter()
        workers = owners.create(settings, hook, cleanup, fl.create_workers)
        federated, _ = owners.shares(settings, workers, fl.federated_mnist)
        yield settings, hook, workers, federated, time.perf_counter() - start


def run_federated(args, loop):
    """federated_learning.py's steps for this loop, timing steps 1-2 (clients and data) and 6."""
    import torch

    import federated_learning as fl
    from fl_tutorial.core import report, sampling
    from fl_tutorial.experiment.fedavg import FedAvg
    from fl_tutorial.privacy.aggregation import ServerAverage
    from fl_tutorial.pysyft.visits import visits

    steps = max_batches(args, loop)
    argv = FLAGS[loop] + ["--data-dir", args.data_dir, "--lr", str(args.lr), "--batch-size",
                          str(batch_size(args, loop)), "--seed", str(args.seed), "--log-interval", str(10 ** 9)]
    argv += ["--max-batches", str(steps)] if steps else []
    with federated_run(argv) as (settings, hook, workers, federated, federate_s):
        loader = fl.sy.FederatedDataLoader(federated, batch_size=settings.batch_size, shuffle=True)
        model = SimpleCNN()
        optimizer = fl.sgd(settings, model.parameters())
        messages = count_messages(hook.local_worker)
        start = time.perf_counter()
        progress = report.Progress("Epoch", 1, len(federated), 10 ** 9, stream=io.StringIO())
        if settings.strategy == "fedavg":
            chosen = settings.clients_per_round and sampling.ClientSampler(
                [w.id for w in workers], settings.clients_per_round, settings.seed).next_round()
            FedAvg(settings, ServerAverage(), fl.train_steps, torch.device("cpu"), settings.batch_size).round(
                model, loader, progress, chosen or None)
        else:
            fl.train(model, torch.device("cpu"), visits(loader, max_batches=settings.max_batches), optimizer, progress)
        train_s = time.perf_counter() - start
    return {"federate_s": federate_s, "train_s": train_s, "batches": progress.batches,
            "accuracy": evaluate(args, model), "messages": messages[0]}


def count_messages(local_worker):
    """Counts the syft messages the server sends from now on (each is a round trip to a client)."""
    count = [0]
    send_msg = local_worker.send_msg

    def counting(message, location):
        count[0] += 1
        return send_msg(message, location)

    local_worker.send_msg = counting
    return count


def profile(args, workers_kind):
    """Where the default loop's time goes: start-up, data, each visit, each part of a training step."""
    import psutil
    import torch

    import federated_learning as fl
    from fl_tutorial.core import report
    from fl_tutorial.experiment import owners
    from fl_tutorial.pysyft.visits import visits

    timings, depth = {}, {}

    def timed(name, function):
        """function, timed; a call nested in another of the same name (a VirtualWorker running the
        server's backward() in this very process) counts once."""
        def wrapper(*a, **k):
            depth[name] = depth.get(name, 0) + 1
            begin = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                depth[name] -= 1
                if depth[name] == 0:
                    timings[name] = timings.get(name, 0.0) + time.perf_counter() - begin
        return wrapper

    from fl_tutorial.experiment import options

    settings = options.parse(fl.build_parser(), ["--workers", workers_kind, "--data-dir", args.data_dir, "--lr",
                                                 str(args.lr), "--seed", str(args.seed), "--log-interval", str(10 ** 9)]
                             + (["--max-batches", str(args.max_batches)] if args.max_batches else []))
    torch.manual_seed(settings.seed)
    hook = fl.sy.TorchHook(torch)
    timings["start-up: Python, imports, syft's hook"] = time.time() - psutil.Process().create_time()
    with contextlib.ExitStack() as cleanup:
        workers = timed("clients: create (and start their processes)", owners.create)(
            settings, hook, cleanup, fl.create_workers)
        federated, _ = timed("data: split and give each client its share", owners.shares)(
            settings, workers, fl.federated_mnist)
        loader = fl.sy.FederatedDataLoader(federated, batch_size=settings.batch_size, shuffle=True)
        model = SimpleCNN()
        optimizer = fl.sgd(settings, model.parameters())
        model.send = timed("visit: model.send (step 4)", model.send)
        model.get = timed("visit: model.get (step 5)", model.get)
        model.forward = timed("step: forward", model.forward)
        optimizer.zero_grad = timed("step: optimizer.zero_grad", optimizer.zero_grad)
        optimizer.step = timed("step: optimizer.step", optimizer.step)
        real_cross_entropy = fl.F.cross_entropy
        fl.F.cross_entropy = timed("step: loss", real_cross_entropy)
        real_backward = torch.Tensor.backward
        torch.Tensor.backward = timed("step: backward", real_backward)
        try:
            begin = time.perf_counter()
            progress = report.Progress("Epoch", 1, len(federated), 10 ** 9, stream=io.StringIO())
            fl.train(model, torch.device("cpu"), visits(loader, max_batches=settings.max_batches), optimizer, progress)
            training = time.perf_counter() - begin
        finally:
            fl.F.cross_entropy, torch.Tensor.backward = real_cross_entropy, real_backward
            del model.forward  # the test below is timed on its own
    batches = min(len(loader), args.max_batches or len(loader))
    begin = time.perf_counter()
    with contextlib.redirect_stdout(None):
        fl.test(model, torch.device("cpu"), fl.server_test_loader(settings))
    timings["test on the server"] = time.perf_counter() - begin
    named_in_training = sum(v for k, v in timings.items() if k.startswith(("visit", "step")))
    timings["the rest: loss.get(), batches, progress"] = training - named_in_training
    total = sum(timings.values())
    lines = ["{} loop, {} workers, {} batches of {}; {}.".format(
                 "default", workers_kind, batches, settings.batch_size, versions()), "",
             "| part | seconds | ms per batch | share |", "|---|---:|---:|---:|"]
    for name, seconds in timings.items():
        lines.append("| {} | {:.2f} | {:.1f} | {:.0%} |".format(
            name, seconds, 1000 * seconds / batches, seconds / total))
    lines.append("| whole run | {:.2f} | {:.1f} | 100% |".format(total, 1000 * total / batches))
    print("\n".join(lines))


def evaluate(args, model):
    import torch
    from torchvision import datasets

    from fl_tutorial.core import mnist

    loader = torch.utils.data.DataLoader(
        datasets.MNIST(args.data_dir, train=False, transform=mnist.TRANSFORM), batch_size=1000)
    model.eval()
    correct = 0
    with torch.no_grad(), contextlib.redirect_stdout(None):
        for data, target in loader:
            correct += (model(data).argmax(dim=1) == target).sum().item()
    return correct / len(loader.dataset)


def child(args):
    """One loop, in this process; prints its measurements as one JSON line."""
    if args.child.startswith("plain"):
        result = run_plain(args, pre_normalised=args.child != "plain", loop=args.child)
    else:
        result = run_federated(args, args.child)
    kilobytes = 1024 if sys.platform == "darwin" else 1  # ru_maxrss: bytes on macOS, kilobytes on Linux
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * kilobytes)
    print("RESULT " + json.dumps(result), flush=True)


def measure(args, loop):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", loop, "--data-dir", args.data_dir,
           "--lr", str(args.lr), "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    if args.max_batches:
        cmd += ["--max-batches", str(args.max_batches)]
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    run_s = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit("error: the {} loop failed:\n{}".format(loop, done.stderr.strip()[-2000:]))
    result = json.loads(lines[-1][len("RESULT "):])
    result["run_s"] = run_s
    return result


def versions():
    from fl_tutorial.pysyft.env import installed_version

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return "{}, {} cores; {} {}; Python {}, torch {}, syft {}".format(
        cpu, os.cpu_count(), platform.system(), platform.release(), platform.python_version(),
        installed_version("torch"), installed_version("syft"))


def table(results, args):
    """Ratios are to the fastest plain PyTorch row of this run, per batch."""
    results = {loop: r for loop, r in results.items() if loop not in PAPER}
    plain_rows = [loop for loop in ("plain", "plain-tensors") if loop in results]
    reference = min(plain_rows, key=lambda loop: results[loop]["train_s"] / results[loop]["batches"])
    plain = results[reference]
    name = LOOPS[reference].split()[0]
    rows = [
        "| loop | federate s | ms / batch | msgs / batch | epoch s | run s | test acc. | peak MB | ms / batch vs {0} "
        "| run vs {0} | memory vs {0} |".format(name),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for loop, r in results.items():
        ms = 1000 * r["train_s"] / r["batches"]
        plain_ms = 1000 * plain["train_s"] / plain["batches"]
        rows.append("| {} | {} | {:.1f} | {} | {:.1f} | {:.1f} | {:.2%} | {:.0f} | {:.2f}x | {:.2f}x | {:.2f}x |"
                    .format(
            LOOPS[loop], "-" if r["federate_s"] is None else "{:.1f}".format(r["federate_s"]), ms,
            "-" if r["messages"] is None else "{:.0f}".format(r["messages"] / r["batches"]), r["train_s"],
            r["run_s"], r["accuracy"], r["peak_mb"], ms / plain_ms, r["run_s"] / plain["run_s"],
            r["peak_mb"] / plain["peak_mb"]))
    header = "{} batches of {} (seed {}, lr {}); {}; ratios to {}, the fastest plain PyTorch here.".format(
        plain["batches"], args.batch_size, args.seed, args.lr, versions(), name)
    return header + "\n\n" + "\n".join(rows)


def paper_table(results):
    """(g) against (a3): the same steps, batches of 10; the difference per sampled client is FedAvg's overhead."""
    plain, round_ = results["plain-paper"], results["paper-round"]
    overhead = (round_["train_s"] - plain["train_s"] * round_["batches"] / plain["batches"]) / 10
    rows = ["| loop | steps | ms / step | train s | run s | test acc. | train vs (a3) | overhead per sampled client |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for loop, r in (("plain-paper", plain), ("paper-round", round_)):
        rows.append("| {} | {} | {:.1f} | {:.1f} | {:.1f} | {:.2%} | {:.2f}x | {} |".format(
            LOOPS[loop], r["batches"], 1000 * r["train_s"] / r["batches"], r["train_s"], r["run_s"], r["accuracy"],
            (r["train_s"] / r["batches"]) / (plain["train_s"] / plain["batches"]),
            "{:.2f} s".format(overhead) if loop == "paper-round" else "-"))
    return ("At the FedAvg paper's scale: the same {} steps of 10 samples; ratios to (a3), in this run.\n\n".format(
        plain["batches"]) + "\n".join(rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="./data", help="folder holding MNIST/raw (default: ./data)")
    parser.add_argument("--max-batches", type=positive_int, help="train on the first N batches only")
    parser.add_argument("--lr", type=positive_float, default=0.01, help="SGD learning rate (default: 0.01)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="batch size (default: 64)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    parser.add_argument("--loops", nargs="+", choices=list(LOOPS), default=list(LOOPS),
                        help="which loops to run (default: all; both plain loops always run: the reference)")
    parser.add_argument("--profile", choices=("virtual", "websocket"),
                        help="instead of the table: where the default loop's time goes, with these workers")
    parser.add_argument("--child", choices=list(LOOPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.profile:
        return profile(args, args.profile)

    from fl_tutorial.pysyft.env import check_stack

    check_stack()
    from fl_tutorial.core import mnist

    try:
        mnist.ensure(args.data_dir)  # once, outside the timings
    except mnist.DataError as error:
        sys.exit("error: {}".format(error))
    loops = ["plain", "plain-tensors"] + [loop for loop in LOOPS if loop in args.loops and not loop.startswith("plain")]
    if "paper-round" in loops:
        loops.insert(loops.index("paper-round"), "plain-paper")  # its reference, batches of 10
    results = {}
    for loop in loops:
        print("running {} ...".format(LOOPS[loop]), file=sys.stderr, flush=True)
        results[loop] = measure(args, loop)
    print(table(results, args))
    if all(loop in results for loop in PAPER):
        print("\n" + paper_table(results))


if __name__ == "__main__":
    main()
