"""A subset of the FedAvg paper's Table 2 (McMahan et al. 2017, MNIST CNN), with SimpleCNN: `make fedavg-paper`.

    python tools/fedavg_paper.py --data-dir DIR [--jobs 2] [--only iid-e5-b10,...] [--max-rounds-scale 0.5]
    python tools/fedavg_paper.py --data-dir DIR --search      the learning-rate search behind LR below
    python tools/fedavg_paper.py --data-dir DIR --system flower   the same runs on the Flower twin

As in the paper: 100 clients, 10 of them drawn each round (C = 0.1), IID shares
of 600 samples or two label shards of 300 (pathological non-IID), no dropout,
test after every round, rounds counted until the test accuracy first reaches
99% (and 97%). Each run is federated_learning.py (or, with --system flower,
the Flower twin's launcher with the same flags) with --metrics-out, one core
each, --jobs at a time; results/fedavg-paper/ gets their JSON, logs and plots,
table.md (beside the paper's numbers) and accuracy.png. A run stops at 99% or
at its round limit (this machine's budget, not the paper's), and then says
what it reached.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

from fl_tutorial.core.cli import positive_float, positive_int  # noqa: E402

COMMON = ["--strategy", "fedavg", "--num-clients", "100", "--clients-per-round", "10", "--dropout", "0",
          "--train-on", "client", "--target-accuracy", "0.99", "--seed", "1", "--log-interval", "1000000"]
PARTITIONS = {"iid": ["--partition", "iid"], "noniid": ["--partition", "noniid", "--shards-per-client", "2"]}
# The learning rates: the best of `--search` (docs/experiments.md, "The FedAvg paper"), one per kind of run.
LR = {"fedsgd": 0.1, "b10": 0.1}
# Table 2 of the paper, MNIST CNN, rounds to 99%: (IID, non-IID).
PAPER = {"fedsgd": (626, 483), "e5-b10": (20, 229), "e1-b10": (34, 350), "e20-b10": (18, 173), "e5-b50": (29, 334)}
# name: (paper row, E, B, FedProx mu, round limits (IID, non-IID)). The limits keep `make fedavg-paper` near an hour
# on 2 cores (README, "The FedAvg paper"); the paper ran FedSGD for hundreds of rounds.
RUNS = {
    "e5-b10": ("e5-b10", 5, "10", 0.0, (30, 4)),
    "e1-b10": ("e1-b10", 1, "10", 0.0, (15, 8)),
    "e1-b10-prox": ("e1-b10", 1, "10", 1.0, (None, 8)),
    "fedsgd": ("fedsgd", 1, "full", 0.0, (15, 15)),
}
SYSTEMS = {"pysyft": "PySyft 0.2.6 (federated_learning.py, VirtualWorkers training themselves)",
           "flower": "Flower 1.42 (the twin, simulation engine)"}
FLOWER_PYTHON = os.path.join(HERE, ".venv-flower", "bin", "python")  # make fedavg-paper SYSTEM=flower builds it
SCRIPT_ONLY = ("--train-on", "--log-interval")  # the twin's clients always train themselves, and log no batches
FEDSGD_TEST_EVERY = 5  # a FedSGD round is one step: its test would cost as much as its training
TARGETS = (0.99, 0.97)


def runs(partitions=("iid", "noniid")):
    """Every run: (name, flags, kind of learning rate), the longest first (they start first)."""
    for name, (_, epochs, batch, mu, limits) in RUNS.items():
        for partition, limit in zip(("iid", "noniid"), limits):
            if limit is None or partition not in partitions:
                continue
            flags = PARTITIONS[partition] + ["--local-epochs", str(epochs), "--batch-size", batch, "--epochs",
                                             str(limit)] + (["--prox-mu", str(mu)] if mu else [])
            if batch == "full":
                flags += ["--test-every", str(FEDSGD_TEST_EVERY)]
            yield "{}-{}".format(partition, name), flags, "fedsgd" if batch == "full" else "b10"


def command(system, flags):
    """The command of one run with these flags: the script, or the twin's launcher without the script's own."""
    if system == "pysyft":
        return [sys.executable, os.path.join(HERE, "federated_learning.py"), *COMMON, *flags]
    twin_flags, given = [], COMMON + flags
    for at in range(0, len(given), 2):  # every flag here takes one value
        if given[at] not in SCRIPT_ONLY:
            twin_flags += given[at:at + 2]
    return [FLOWER_PYTHON, "-m", "flower_twin.launch", *twin_flags]


def run(args, name, flags, lr):
    """One run on one core; returns its metrics."""
    out = os.path.join(args.out, name)
    cmd = command(args.system, ["--data-dir", args.data_dir, "--lr", str(lr), *flags, "--metrics-out", out + ".json",
                                "--plot", out + ".png"])
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # a core each: --jobs runs side by side
    print("started  {}: lr {} {}".format(name, lr, " ".join(flags)), flush=True)
    start = time.time()
    with open(out + ".log", "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=HERE)
    if done.returncode != 0:
        raise SystemExit("error: {} failed (exit status {}); its output is in {}.log".format(
            name, done.returncode, out))
    with open(out + ".json") as f:
        data = json.load(f)
    data["wall_seconds"] = time.time() - start
    print("finished {} in {:.0f} s: {}".format(name, data["wall_seconds"], summary(data)), flush=True)
    return data


def rounds_to(data, target):
    """The first tested round whose accuracy reaches target, or None."""
    return next((e["epoch"] for e in data["epochs"] if e.get("test_accuracy", 0) >= target), None)


def best(data):
    tested = [e for e in data["epochs"] if "test_accuracy" in e]
    top = max(tested, key=lambda e: e["test_accuracy"])
    return top["test_accuracy"], top["epoch"]


def summary(data):
    reached = rounds_to(data, 0.99)
    if reached:
        return "99% after round {}".format(reached)
    accuracy, at = best(data)
    return "99% not reached in {} rounds (best {:.2%}, round {})".format(len(data["epochs"]), accuracy, at)


def cell(rounds, data):
    """Rounds to a target, or '> N' with the run's limit when it stopped short."""
    return str(rounds) if rounds else "> {}".format(len(data["epochs"]))


def speedup(rounds, fedsgd, target):
    """FedSGD's rounds to target over this run's; a lower bound when FedSGD fell short; '-' when this run did."""
    if fedsgd is None or not rounds:
        return "-"
    base = rounds_to(fedsgd, target)
    return "{:.1f}x".format(base / rounds) if base else "> {:.1f}x".format(len(fedsgd["epochs"]) / rounds)


def table(results, system="pysyft"):
    """Markdown: each run beside the paper's rounds to 99%, under the name of the system that ran them."""
    lines = ["System: {}".format(SYSTEMS[system]), "",
             "| run | E | B | FedProx mu | lr | rounds to 99% | paper (CNN) | rounds to 97% | speed-up over FedSGD "
             "(99% / 97%) | best accuracy (round) | rounds run | time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for partition in ("iid", "noniid"):
        fedsgd = results.get("{}-fedsgd".format(partition))
        for name, (paper_row, epochs, batch, mu, _) in RUNS.items():
            data = results.get("{}-{}".format(partition, name))
            if data is None:
                continue
            reached = {t: rounds_to(data, t) for t in TARGETS}
            accuracy, at = best(data)
            lines.append("| {} {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {:.2%} ({}) | {} | {:.0f} min |"
                         .format(
                "IID" if partition == "iid" else "non-IID", "FedSGD" if batch == "full" else "FedAvg",
                epochs, "inf" if batch == "full" else batch, mu or "-", data["config"]["lr"],
                cell(reached[0.99], data), PAPER[paper_row][partition == "noniid"], cell(reached[0.97], data),
                speedup(reached[0.99], fedsgd, 0.99), speedup(reached[0.97], fedsgd, 0.97),
                accuracy, at, len(data["epochs"]), data["wall_seconds"] / 60))
    return "\n".join(lines)


def plot(results, path):
    """Test accuracy against rounds, IID and non-IID side by side, with the 99% line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.5))
    for ax, partition in zip(fig.subplots(1, 2), ("iid", "noniid")):
        for name, data in sorted(results.items()):
            if name.startswith(partition + "-"):
                tested = [e for e in data["epochs"] if "test_accuracy" in e]
                ax.plot([e["epoch"] for e in tested], [100 * e["test_accuracy"] for e in tested],
                        label=name[len(partition) + 1:])
        lowest = min([y for line in ax.get_lines() for y in line.get_ydata()] or [90])
        ax.axhline(99, color="gray", linestyle="--", linewidth=1)
        ax.set(xlabel="round", ylabel="test accuracy (%)", ylim=(max(0, min(90, lowest - 2)), 100),
               title="{}, 100 clients, C = 0.1".format("IID" if partition == "iid" else "non-IID (2 shards each)"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


SEARCH = {"b10": ([0.02, 0.05, 0.1, 0.2], ["--local-epochs", "1", "--batch-size", "10", "--epochs", "1"]),
          "fedsgd": ([0.03, 0.1, 0.3, 1.0], ["--local-epochs", "1", "--batch-size", "full", "--epochs", "5",
                                       "--test-every", "5"])}


def search_jobs():
    return [("search-{}-lr{}".format(kind, lr), PARTITIONS["iid"] + flags, lr)
            for kind, (lrs, flags) in SEARCH.items() for lr in lrs]


def search(args, jobs):
    """The learning-rate search: each grid value for a few IID rounds; the best test accuracy wins."""
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda job: run(args, *job), jobs))
    done = {}
    for name, _, _ in search_jobs():  # with --only, the runs made before count too
        if os.path.exists(os.path.join(args.out, name + ".json")):
            with open(os.path.join(args.out, name + ".json")) as f:
                done[name] = json.load(f)
    lines = ["| kind | lr | rounds | test accuracy after them |", "|---|---:|---:|---:|"]
    for name, data in done.items():
        last = [e for e in data["epochs"] if "test_accuracy" in e][-1]
        lines.append("| {} | {} | {} | {:.2%} |".format(name.split("-")[1], data["config"]["lr"], last["epoch"],
                                                        last["test_accuracy"]))
    return "\n".join(lines)


CORES = os.cpu_count() or 1


def runs_parser(description, out, jobs=CORES):
    """The flags every table of runs takes: --data-dir, --out (default `out`), --jobs (default `jobs`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-dir", default="./data", help="folder holding MNIST/raw (default: ./data)")
    parser.add_argument("--out", default=out, help="where the runs go (default: %(default)s)")
    parser.add_argument("--jobs", type=positive_int, default=jobs,
                        help="runs at a time, one core each (default: this machine's cores)")
    return parser


def main():
    parser = runs_parser(__doc__.splitlines()[0], "results/fedavg-paper", jobs=None)
    parser.add_argument("--only", help="comma-separated run names (iid-e5-b10, noniid-fedsgd, ...)")
    parser.add_argument("--max-rounds-scale", type=positive_float, default=1.0,
                        help="multiply every round limit (a quick look: 0.1)")
    parser.add_argument("--search", action="store_true", help="the learning-rate search instead of the table")
    parser.add_argument("--system", choices=sorted(SYSTEMS), default="pysyft",
                        help="pysyft: federated_learning.py (default); flower: the Flower twin (make fedavg-paper "
                             "SYSTEM=flower), one run at a time unless --jobs says otherwise")
    args = parser.parse_args()
    if args.system == "flower" and not os.path.exists(FLOWER_PYTHON):
        parser.error("--system flower needs the twin's environment: run `make flower-venv`")
    if args.jobs is None:  # Ray spreads one simulation over every core
        args.jobs = 1 if args.system == "flower" else CORES
    os.makedirs(args.out, exist_ok=True)
    chosen = search_jobs() if args.search else list(runs())
    names = [name for name, _, _ in chosen]
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            parser.error("--only: no run named {}; the runs are {}".format(", ".join(unknown), ", ".join(names)))
        chosen = [job for job in chosen if job[0] in wanted]
    if args.search:
        result = search(args, chosen)
        with open(os.path.join(args.out, "lr-search.md"), "w") as f:
            f.write(result + "\n")
        print(result)
        return
    scaled = []
    for name, flags, kind in chosen:
        at = flags.index("--epochs") + 1
        flags = flags[:at] + [str(max(1, round(int(flags[at]) * args.max_rounds_scale)))] + flags[at + 1:]
        scaled.append((name, flags, LR[kind]))
    start = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip([name for name, _, _ in scaled], pool.map(lambda job: run(args, *job), scaled)))
    result = table(results, args.system)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(result + "\n")
    plot(results, os.path.join(args.out, "accuracy.png"))
    print("\n" + result)
    print("\n{} runs, {} at a time, in {:.0f} min; {}/table.md and accuracy.png".format(
        len(results), args.jobs, (time.time() - start) / 60, args.out))


if __name__ == "__main__":
    main()
