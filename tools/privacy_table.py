"""Accuracy against privacy spent, DP-FedAvg on MNIST: `make privacy-table` (README, "Privacy").

    python tools/privacy_table.py --data-dir DIR [--jobs 2] [--rounds 10] [--clip 1.0]

The FedAvg paper's setting (tools/fedavg_paper.py: 100 IID clients of 600 samples,
10 drawn a round, E = 1, B = 10, lr 0.1, no dropout), each client's update clipped
to --clip, and Gaussian noise of multiplier Z on the average: one run per Z, plus
plain FedAvg and clipping alone. epsilon at delta = 1e-5 comes from the runs' own
metrics (dp-accounting's RDP accountant, fl_tutorial/privacy/dp.py). results/privacy/ gets
the runs' JSON, logs and plots, and table.md. A run whose training diverges
(too much noise) keeps the rounds it finished, and the table says so.
"""
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "tools"))

import fedavg_paper  # noqa: E402  (its run(): one core per run, metrics and plots)
from fl_tutorial.core.cli import positive_float, positive_int  # noqa: E402

NOISE = (0.01, 0.1, 1.0)  # noise multipliers Z
SETTING = ["--partition", "iid", "--local-epochs", "1", "--batch-size", "10"]
LR = fedavg_paper.LR["b10"]


def jobs(rounds, clip):
    common = SETTING + ["--epochs", str(rounds)]
    yield "fedavg", common
    yield "clip-only", common + ["--dp-clip", str(clip)]
    for z in NOISE:
        yield "noise-{:g}".format(z), common + ["--dp-clip", str(clip), "--dp-noise", str(z)]


def run(args, name, flags):
    """One run (tools/fedavg_paper.py's); a run that stops early (it diverged) keeps the rounds it finished."""
    try:
        return fedavg_paper.run(args, name, flags, LR)
    except SystemExit as error:
        print(error, flush=True)
        return finished(args, name, stopped=True)


def finished(args, name, stopped=False):
    out = os.path.join(args.out, name)
    with open(out + ".json") as f:
        data = json.load(f)
    if stopped:
        with open(out + ".log") as f:
            data["stopped"] = [line for line in f.read().splitlines() if line.startswith("error: ")][-1:]
    return data


def table(results):
    lines = ["| run | Z | C | rounds | epsilon at delta 1e-5 | test accuracy (last round) | best | time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, data in results.items():
        config, last = data["config"], data["epochs"][-1]
        epsilon = last.get("epsilon")
        lines.append("| {} | {} | {} | {}{} | {} | {:.2f}% | {:.2f}% | {:.0f} min |".format(
            name, "-" if config["dp_noise"] is None else "{:g}".format(config["dp_noise"]),
            "-" if config["dp_clip"] is None else "{:g}".format(config["dp_clip"]), len(data["epochs"]),
            " (then diverged)" if data.get("stopped") else "",
            "-" if config["dp_clip"] is None else "inf" if epsilon is None else "{:.3g}".format(epsilon),
            100 * last["test_accuracy"], 100 * max(e["test_accuracy"] for e in data["epochs"]),
            sum(e["seconds"] for e in data["epochs"]) / 60))
    return "\n".join(lines)


def main():
    parser = fedavg_paper.runs_parser(__doc__.splitlines()[0], "results/privacy")
    parser.add_argument("--rounds", type=positive_int, default=10, help="rounds a run (default: 10)")
    parser.add_argument("--clip", type=positive_float, default=1.0, help="the clipping bound C (default: 1.0)")
    parser.add_argument("--only", help="comma-separated run names to run again (fedavg, clip-only, noise-0.1, ...); "
                                       "the others' results are read from --out")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    args.out = os.path.abspath(args.out)
    every = list(jobs(args.rounds, args.clip))
    names = [name for name, _ in every]
    again = args.only.split(",") if args.only else names
    if set(again) - set(names):
        parser.error("--only: the runs are {}".format(", ".join(names)))
    start = time.time()
    chosen = [job for job in every if job[0] in again]
    with ThreadPoolExecutor(args.jobs) as pool:
        done = dict(zip([name for name, _ in chosen], pool.map(lambda job: run(args, *job), chosen)))
    results = {name: done[name] if name in done else finished(args, name) for name in names}
    result = table(results)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(result + "\n")
    print("\n" + result)
    print("\n{} run(s), {} at a time, in {:.0f} min; {}/table.md".format(
        len(chosen), args.jobs, (time.time() - start) / 60, args.out))


if __name__ == "__main__":
    main()
