"""`make compare`: the PySyft script and its Flower twin, same flags, one table; plain PyTorch as the reference.

    make compare                                  FedAvg, 2 clients, IID, 1 round of 1 local epoch, seed 1, ./data
    make compare ARGS="--data-dir DIR --epochs 3 --partition noniid"

A row per system, each run as a user runs it, in its own environment:
- plain PyTorch, torch 1.4 (.venv) and torch 2.x (.venv-flower), the speed reference: per round, as many
  epochs over the whole training set as each client makes over its share (the local epochs);
- PySyft 0.2.6 with VirtualWorkers, and with client processes over websockets;
- the Flower twin on Flower's simulation engine, and on its deployment engine (TLS, authenticated nodes).
Bytes on the wire are counted by a relay on 127.0.0.1 between the clients and the
server (fl_tutorial/core/relay.py), both directions, framing and TLS included. Peak RSS
is the largest sum, sampled every 0.2 s, over all the processes of a row (Ray's too).
Runs on Linux (it reads /proc).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from flower_twin import config  # noqa: E402

from fl_tutorial.core import partition  # noqa: E402
from fl_tutorial.core.relay import Relay  # noqa: E402
from fl_tutorial.remote.local_clients import LocalClients  # noqa: E402  (starts the PySyft clients, .venv's)

PYSYFT_PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
ROWS = {
    "plain-1.4": "plain PyTorch (torch 1.4, .venv)",
    "pysyft-virtual": "PySyft 0.2.6, VirtualWorkers",
    "pysyft-websocket": "PySyft 0.2.6, websocket clients, train-only (`--train-on client`)",
    "pysyft-websocket-coordinator": "PySyft 0.2.6, websocket clients, `--train-on coordinator`",
    "plain-2": "plain PyTorch (torch 2.x, .venv-flower)",
    "flower-simulation": "Flower 1.42, simulation engine",
    "flower-deployment": "Flower 1.42, deployment engine (TLS)",
}
REFERENCE = {row: "plain-1.4" if row.startswith("pysyft") else "plain-2" for row in ROWS if not row.startswith("plain")}
MARKER = "FL_COMPARE_ROW"


def build_parser():
    parser = argparse.ArgumentParser(description="PySyft and its Flower twin side by side")
    for flag, (key, kind) in config.FLAGS.items():
        if key not in ("metrics-out", "plot", "save-model", "device", "max-batches"):
            parser.add_argument(flag, dest=key, choices=config.CHOICES.get(key),
                                type=None if key in config.CHOICES else kind)
    parser.add_argument("--rows", default=",".join(ROWS), help="which rows, comma-separated (default: all): " +
                        ", ".join(ROWS))
    parser.add_argument("--json-out", metavar="PATH", help="also write the rows as JSON")
    return parser


DEFAULTS = {"num-clients": 2, "partition": "iid", "num-server-rounds": 1, "local-epochs": 1, "seed": 1}


def shared_flags(args):
    """The flags both systems get: the comparison's defaults, and what was given."""
    flags = ["--strategy", "fedavg"]
    for flag, (key, _) in config.FLAGS.items():
        value = getattr(args, key, None)
        value = DEFAULTS.get(key) if value is None else value
        if value is not None:
            flags += [flag, str(value)]
    return flags


class PeakRSS:
    """Samples the summed resident memory of every process that carries this row's marker."""

    def __init__(self, value):
        self.value, self.peak, self.running = value, 0, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self):
        needle = "{}={}".format(MARKER, self.value).encode()
        while self.running:
            total = 0
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open("/proc/{}/environ".format(pid), "rb") as f:
                        if needle not in f.read().split(b"\0"):
                            continue
                    with open("/proc/{}/statm".format(pid)) as f:
                        total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
                except (OSError, ValueError, IndexError):
                    continue
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def stop(self):
        self.running = False
        self.thread.join()
        return self.peak


def run(command, env):
    done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError("{} failed (exit status {}):\n{}".format(" ".join(command[:3]), done.returncode,
                                                                   (done.stdout + done.stderr)[-3000:]))
    return done.stdout


def measure(row, args, flags, folder):
    """Run one row; returns its numbers."""
    rounds = getattr(args, "num-server-rounds") or DEFAULTS["num-server-rounds"]
    local_epochs = getattr(args, "local-epochs") or DEFAULTS["local-epochs"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{MARKER: uuid.uuid4().hex})
    os.environ[MARKER] = env[MARKER]  # processes this one starts itself (the websocket clients) carry it too
    metrics = os.path.join(folder, row + ".json")
    rss, start, wire = PeakRSS(env[MARKER]), time.time(), None
    try:
        if row.startswith("plain"):  # per round: local-epochs passes over all the data
            python = PYSYFT_PYTHON if row == "plain-1.4" else sys.executable
            plain = [python, os.path.join(ROOT, "tools", "plain_pytorch.py"), "--epochs", str(rounds * local_epochs)]
            for flag in ("--data-dir", "--lr", "--batch-size", "--test-batch-size", "--seed", "--dropout"):
                key = config.FLAGS[flag][0]
                if getattr(args, key, None) is not None:
                    plain += [flag, str(getattr(args, key))]
            epochs = json.loads(run(plain, env).strip().splitlines()[-1])["epochs"]
            epochs = [{"test_accuracy": epochs[-1]["test_accuracy"], "test_loss": epochs[-1]["test_loss"],
                       "seconds": sum(e["seconds"] for e in epochs) / rounds}] * rounds
        elif row == "pysyft-virtual":
            run([PYSYFT_PYTHON, "federated_learning.py", *flags, "--metrics-out", metrics], env)
        elif row.startswith("pysyft-websocket"):
            data_dir = os.path.abspath(args.__dict__.get("data-dir") or "./data")
            where = "coordinator" if row.endswith("coordinator") else "client"
            clients = LocalClients(partition.client_names(args.__dict__.get("num-clients") or 2),
                                   data_dir, python=PYSYFT_PYTHON,
                                   extra_args=["--train-only"] if where == "client" else [])
            with clients as (addresses, _):
                relays = [Relay(host, port) for _, host, port in addresses]
                connect = ",".join("{}=127.0.0.1:{}".format(name, r.port) for (name, _, _), r in zip(addresses, relays))
                try:
                    run([PYSYFT_PYTHON, "federated_learning.py", *flags, "--workers", "websocket", "--train-on", where,
                         "--connect", connect, "--token-file", clients.token_file, "--metrics-out", metrics], env)
                finally:
                    wire = sum(r.total for r in relays)
                    for r in relays:
                        r.close()
        else:
            engine = row.split("-")[1]
            run([sys.executable, "-m", "flower_twin.launch", *flags, "--engine", engine, "--metrics-out", metrics]
                + (["--count-bytes"] if engine == "deployment" else []), env)
    finally:
        seconds, peak = time.time() - start, rss.stop()
    if not row.startswith("plain"):
        with open(metrics) as f:
            data = json.load(f)
        epochs = data["epochs"]
        wire = (data.get("run") or {}).get("wire_bytes") or wire
    return {"row": row, "system": ROWS[row], "test_accuracy": epochs[-1]["test_accuracy"],
            "test_loss": epochs[-1]["test_loss"], "run_seconds": seconds,
            "round_seconds": sum(e["seconds"] for e in epochs) / len(epochs),
            "wire_bytes_per_round": wire / len(epochs) if wire else None, "peak_rss": peak}


def table(results):
    by_row = {r["row"]: r for r in results}
    lines = ["| system | test accuracy | test loss | whole run, s | s per round | round vs plain (same env) "
             "| MB per round on the wire | peak RSS, MB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        reference = by_row.get(REFERENCE.get(r["row"]))
        ratio = "{:.2f}x".format(r["round_seconds"] / reference["round_seconds"]) if reference else (
            "1.00x" if r["row"].startswith("plain") else "-")
        wire = "{:.1f}".format(r["wire_bytes_per_round"] / 1e6) if r["wire_bytes_per_round"] else "-"
        lines.append("| {} | {:.2f} % | {:.4f} | {:.1f} | {:.1f} | {} | {} | {:.0f} |".format(
            r["system"], 100 * r["test_accuracy"], r["test_loss"], r["run_seconds"], r["round_seconds"], ratio,
            wire, r["peak_rss"] / 1e6))
    return "\n".join(lines)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error("--rows: unknown row {}; the rows are {}".format(unknown[0], ", ".join(ROWS)))
    if not os.path.isdir("/proc"):
        sys.exit("error: make compare reads /proc for memory; it runs on Linux")
    flags = shared_flags(args)
    print("Flags for both systems: {}".format(" ".join(flags)), flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="fl-compare-") as folder:
        for row in rows:
            print("== {} ...".format(ROWS[row]), flush=True)
            try:
                results.append(measure(row, args, flags, folder))
            except RuntimeError as error:
                sys.exit("error: {}".format(error))
    print("\nOn {} ({} cores), Python {} here:\n".format(cpu_name(), os.cpu_count(), platform.python_version()))
    print(table(results))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"flags": flags, "cpu": cpu_name(), "rows": results}, f, indent=2)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("Interrupted.")
