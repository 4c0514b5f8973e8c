"""`make flower`: the Flower twin of federated_learning.py on this machine, with Flower's own commands.

    python -m flower_twin.launch                      FedAvg, 2 clients, IID, 1 round of 1 local epoch, seed 1
    python -m flower_twin.launch --epochs 3 --num-clients 5 --partition noniid
    python -m flower_twin.launch --engine deployment  a SuperLink and one SuperNode per client: TLS, authenticated nodes

The flags are the script's, with the same meaning and checks; each sets one key of
the app's run config (pyproject.toml). Everything this starts is stopped when it
ends, also on errors and Ctrl-C. Exit status: 0 done, 1 failed, 2 bad flags.
"""
import argparse
import json
import os
import signal
import sys
from types import FrameType
from typing import Never

from fl_tutorial.core import files, memory, mnist, partition
from flower_twin import config, processes, task
from flower_twin.federation import FederationError, LocalFederation


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="The Flower twin of federated_learning.py (FedAvg on Flower 1.42)")
    defaults = config.defaults()
    for flag, (key, kind) in config.FLAGS.items():
        extra = {"choices": config.CHOICES[key]} if key in config.CHOICES else {"type": kind}
        parser.add_argument(flag, dest=key, metavar=None if key in config.CHOICES else "VALUE",
                            help=f"run config {key} (default: {defaults[key] if defaults[key] != '' else 'off'})",
                            **extra)
    parser.add_argument("--strategy", choices=("fedavg",), default="fedavg",
                        help="the twin runs Federated Averaging, the script's --strategy fedavg")
    parser.add_argument("--engine", choices=("simulation", "deployment"), default="simulation",
                        help="simulation: Flower's simulation engine (default); deployment: a SuperLink and one "
                             "SuperNode process per client on 127.0.0.1, with TLS and SuperNode authentication")
    parser.add_argument("--client-data-dirs", metavar="DIR,DIR,...",
                        help="deployment: each client's own MNIST folder, in client order (default: --data-dir)")
    parser.add_argument("--count-bytes", action="store_true",
                        help="deployment: count every byte between the SuperNodes and the SuperLink (a relay on "
                             "127.0.0.1; make compare uses it)")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[dict, config.Settings, argparse.Namespace]:
    """The flags as a full run config (defaults filled in, paths absolute) and the parsed arguments."""
    parser = build_parser()
    args = parser.parse_args(argv)
    values = config.defaults()
    values.update({key: getattr(args, key) for key, _ in config.FLAGS.values() if getattr(args, key) is not None})
    for key in config.PATHS:
        values[key] = os.path.abspath(values[key]) if values[key] else ""
    try:
        settings = config.settings(values)
    except config.ConfigError as error:
        parser.error(str(error))
    for key in ("metrics-out", "plot", "save-model"):
        problem = values[key] and files.cannot_write(values[key])
        if problem:
            parser.error(f"--{key} {values[key]}: {problem}")
    args.client_data_dirs = client_data_dirs(parser, args, settings)
    if args.count_bytes and args.engine != "deployment":
        parser.error("--count-bytes is for --engine deployment: simulated clients send nothing over a network")
    return values, settings, args


def client_data_dirs(parser: argparse.ArgumentParser, args: argparse.Namespace,
                     settings: config.Settings) -> list[str]:
    if args.client_data_dirs is None:
        return [settings.data_dir] * settings.num_clients
    if args.engine != "deployment":
        parser.error("--client-data-dirs is for --engine deployment: simulated clients share --data-dir")
    dirs = [os.path.abspath(d) for d in args.client_data_dirs.split(",")]
    if len(dirs) != settings.num_clients:
        parser.error(f"--client-data-dirs names {len(dirs)} folder(s) for {settings.num_clients} clients")
    return dirs


def check_before_starting(parser: argparse.ArgumentParser, settings: config.Settings,
                          data_dirs: list[str]) -> None:
    """What would fail later fails now: the device, the data here, a split that cannot be made, memory."""
    try:
        task.pick_device(settings.device)
        for data_dir in sorted(set(data_dirs + [settings.data_dir])):
            mnist.ensure_raw(data_dir)
        labels = mnist.read_idx(mnist.ensure_raw(data_dirs[0])["train-labels-idx1-ubyte"])
    except (task.DeviceError, mnist.DataError) as error:
        sys.exit(f"error: {error}")
    try:
        largest_share = max(len(share) for share in partition.split(labels, settings.rule()))
    except partition.PartitionError as error:
        parser.error(str(error))
    problem = memory.batch_problem(lambda: task.SimpleCNN(dropout=settings.dropout), settings.batch_size,
                                   settings.test_batch_size, largest_share)  # the script's check
    if problem:
        parser.error(problem)


def main(argv: list[str] | None = None) -> None:
    values, settings, args = parse_args(argv)
    check_before_starting(build_parser(), settings, args.client_data_dirs)
    with LocalFederation(args.engine, settings.num_clients, args.client_data_dirs,
                         count_bytes=args.count_bytes) as federation:
        record = federation.run(config.APP_DIR, values)
    if settings.metrics_out and os.path.exists(settings.metrics_out):
        add_run_record(settings.metrics_out, args.engine, record)
    traffic = record.get("network-traffic", {}).get("total-bytes", 0)
    messages = f", {traffic / 1e6:.1f} MB of messages (Flower's count)" if traffic else ""
    wire = f", {record['wire-bytes'] / 1e6:.1f} MB on the wire" if record["wire-bytes"] else ""
    print(f"Flower run {record['run-id']}: {record['status']} in {record['elapsed']:.1f} s{messages}{wire}")
    if record["error"]:
        sys.exit(f"error: {record['error']}")


def add_run_record(path: str, engine: str, record: dict) -> None:
    """Flower's own record of the run (engine, seconds, bytes on the network) joins the metrics file."""
    with open(path) as f:
        data = json.load(f)
    data["run"] = {"system": "flower", "engine": engine, "run_id": record["run-id"], "status": record["status"],
                   "seconds": record["elapsed"], "network_bytes": record.get("network-traffic", {}).get("total-bytes"),
                   "wire_bytes": record["wire-bytes"]}
    files.atomic_write(path, lambda f: f.write(json.dumps(data, indent=2).encode()))


def _terminate(signum: int, frame: FrameType | None) -> Never:
    raise KeyboardInterrupt  # SIGTERM: stop the federation as Ctrl-C does


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    processes.become_subreaper()  # what Ray leaves behind comes back here, and goes with the rest
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("Interrupted.")
    except FederationError as error:
        sys.exit(f"error: {error}")
    finally:
        processes.end_descendants()
