"""A federation on this machine, run with Flower's own commands, and taken down again whatever happens.

- simulation: a SuperLink in simulation mode; `flwr run` starts Flower's
  simulation engine (Ray) with one simulated SuperNode per client.
- deployment: a SuperLink serving TLS with SuperNode authentication, and one
  `flower-supernode` process per client, each with its own key and data folder.

Either way the SuperLink is this run's own, on a free port of 127.0.0.1, with its
configuration in a folder of its own (FLWR_HOME): unlike the local SuperLink that
a plain `flwr run` starts and leaves running, everything here stops at the end.
Flower's telemetry and update check, Ray's usage statistics and run-time
installation of dependencies are off, and Ray keeps to 127.0.0.1: nothing goes
to the network, and nothing listens beyond this machine.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterable
from typing import TextIO

from fl_tutorial.core import partition
from fl_tutorial.core.relay import Relay
from flower_twin import config, credentials
from flower_twin.processes import Processes, free_port, wait_for_port


def _scripts_folder() -> str:
    """Where this Python's `flwr`, `flower-superlink` ... are: a venv's bin, or /usr/local/bin (Colab)."""
    folder = sysconfig.get_path("scripts")
    if not os.path.exists(os.path.join(folder, "flwr")) and shutil.which("flwr"):
        folder = os.path.dirname(shutil.which("flwr"))
    return folder


BIN = _scripts_folder()
OFFLINE = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_USAGE_STATS_ENABLED": "0",
           # On Linux Ray listens on every interface and talks over the machine's address; with this
           # (despite its name) it keeps to 127.0.0.1, as it does on macOS and Windows.
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           # Ray hides the GPUs from a simulated client that reserved none; let the clients see them.
           "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "PYTHONUNBUFFERED": "1"}
CONNECTION = "twin"
START_TIMEOUT = 60
STARTED = re.compile(r"Successfully started run (\d+)")
FAILED_PREFIX = re.compile(r"^(ServerApp|Simulation) failed with exception: ")


class FederationError(RuntimeError):
    """The federation could not start, or a part of it stopped; one line, naming the part."""


class LocalFederation:
    """Context manager: a SuperLink (and, for deployment, SuperNodes) of this run; run() runs the app on it."""

    def __init__(self, engine: str, num_clients: int, client_data_dirs: list[str] | None = None,
                 count_bytes: bool = False) -> None:
        self.engine, self.num_clients = engine, num_clients
        self.client_data_dirs = client_data_dirs
        self.relay = None
        self.count_bytes = count_bytes and engine == "deployment"
        self.folder = tempfile.mkdtemp(prefix="flower-twin-")
        self.home = os.path.join(self.folder, "flwr-home")
        os.makedirs(self.home)
        env = dict(os.environ, FLWR_HOME=self.home, PATH=os.pathsep.join([BIN, os.environ.get("PATH", "")]), **OFFLINE)
        self.procs = Processes(self.folder, env)
        self.ca = None

    def __enter__(self) -> "LocalFederation":
        try:
            self.port = self._start_superlink()
            if self.count_bytes:  # the SuperNodes reach the SuperLink through a relay that counts the bytes
                self.relay = Relay("127.0.0.1", self.port)
            if self.engine == "deployment":
                for index in range(self.num_clients):
                    self._start_supernode(index)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> bool:
        self.close()
        return False

    def close(self) -> None:
        """Stop every process of this federation, then delete its folder (keys, logs)."""
        self.procs.stop()
        if self.relay:
            self.relay.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def flwr(self, *args: str) -> str:
        """A `flwr` command against this run's SuperLink; returns its output (FederationError if it fails)."""
        done = subprocess.run([os.path.join(BIN, "flwr"), *args], env=self.procs.env, cwd=self.folder,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
        if done.returncode != 0:
            said = " | ".join(done.stdout.strip().splitlines()[-3:])
            raise FederationError(f"flwr {args[0]} failed: {said}")
        return done.stdout

    def _start_superlink(self, attempts: int = 3) -> int:
        """`flower-superlink` on a free port; another port if that one was taken in the meantime."""
        if self.engine == "deployment":
            self.ca = credentials.certificate_authority(self.folder)
            cert, key = credentials.server_certificate(self.folder, self.ca)
            security = ["--ssl-ca-certfile", self._path("ca.pem"), "--ssl-certfile", cert, "--ssl-keyfile", key,
                        "--enable-supernode-auth"]
        else:
            security = ["--simulation", "--insecure"]
        for _ in range(attempts):
            port = free_port()
            proc = self.procs.start("superlink", ["flower-superlink", *security, "--host", "127.0.0.1", "--port",
                                                  str(port), "--disable-runtime-dependency-installation"])
            if wait_for_port(port, proc, START_TIMEOUT):
                self._write_connection(port)
                return port
            self.procs.stop("superlink")
            if not any("address already in use" in line.lower() for line in self.procs.log_tail("superlink", 20)):
                break
        raise FederationError(f"the SuperLink did not start: {' | '.join(self.procs.log_tail('superlink'))}")

    def _path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def _write_connection(self, port: int) -> None:
        """$FLWR_HOME/config.toml: how `flwr` reaches this SuperLink."""
        lines = ['[superlink]', f'default = "{CONNECTION}"', '', f'[superlink.{CONNECTION}]',
                 f'address = "127.0.0.1:{port}"']
        lines.append(f'root-certificates = "{self._path("ca.pem")}"' if self.ca else "insecure = true")
        with open(os.path.join(self.home, "config.toml"), "w") as f:
            f.write("\n".join(lines) + "\n")

    def _start_supernode(self, index: int) -> None:
        """Register the client's public key with the SuperLink, then start its SuperNode with the private key."""
        name = partition.client_name(index)
        private, public = credentials.supernode_keys(self.folder, name)
        self.flwr("supernode", "register", public, CONNECTION)
        data_dir = self.client_data_dirs[index]
        node_config = f'partition-id={index} num-partitions={self.num_clients} data-dir="{data_dir}"'
        superlink = f"127.0.0.1:{self.relay.port if self.relay else self.port}"
        # The clients share this machine's cores, as simulated ones do (Ray gives each one CPU): more
        # threads than cores make every client slower (measured on 2 cores: a round took 2.25 times as long).
        threads = str(max(1, (os.cpu_count() or 1) // self.num_clients))
        self.procs.start(name, ["flower-supernode", "--superlink", superlink,
                                "--root-certificates", self._path("ca.pem"), "--auth-supernode-private-key", private,
                                "--node-config", node_config, "--host", "127.0.0.1", "--port", str(free_port())],
                         OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)

    def run(self, app_dir: str, values: dict, out: TextIO = sys.stdout) -> dict:
        """`flwr run APP --stream --run-config VALUES` here; returns Flower's record of the run (`flwr ls`).

        The run's log goes to `out` as it comes, its tracebacks folded away (the
        caller reports the failure in one line). A SuperNode or the SuperLink that
        stops during the run ends it at once with FederationError.
        """
        run_config = config.write_overrides(self._path("run-config.toml"), values)
        command = [os.path.join(BIN, "flwr"), "run", app_dir, CONNECTION, "--stream", "--run-config", run_config]
        if self.engine == "simulation":
            command += ["--federation-config", f"num-supernodes={self.num_clients} client-resources-num-cpus=1 "
                        "client-resources-num-gpus=0"]
        stream = subprocess.Popen(command, env=self.procs.env, cwd=self.folder, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, bufsize=1)
        run_id = []
        reader = threading.Thread(target=_relay, args=(stream.stdout, out, run_id), daemon=True)
        reader.start()
        try:
            while stream.poll() is None:
                stopped = self.procs.ended()
                if stopped:
                    name, status = next(iter(stopped.items()))
                    part = "SuperLink" if name == "superlink" else "SuperNode"
                    raise FederationError(f"{name} ({part}) stopped during the run (exit status {status}"
                                          f"{self._why(name)}); the run stops here")
                time.sleep(0.2)
        finally:
            if stream.poll() is None:
                stream.terminate()
                stream.wait()
            reader.join(timeout=5)
        if not run_id:
            raise FederationError(f"flwr run did not start a run (exit status {stream.returncode})")
        return self.record(run_id[0])

    def _why(self, name: str) -> str:
        """What a stopped process said last about why, if anything: ': reason'."""
        reasons = [line for line in self.procs.log_tail(name, 40)
                   if line.startswith(("[code:", "[SSL")) or ("ERROR" in line and "Exit Code" not in line)]
        return ": " + reasons[-1].split("ERROR", 1)[-1].strip(" :\x1b[0m") if reasons else ""

    def record(self, run_id: str) -> dict:
        """Flower's record of a run: status, details, elapsed seconds, network traffic."""
        listing = json.loads(self.flwr("list", CONNECTION, "--run-id", run_id, "--format", "json"))
        (record,) = [r for r in listing["runs"] if r["run-id"] == run_id]
        record["error"] = None
        record["wire-bytes"] = self.relay.total if self.relay else None
        if record["status"] != "finished:completed":
            record["error"] = FAILED_PREFIX.sub("", record.get("status-details") or record["status"])
        return record


def _relay(lines: Iterable[str], out: TextIO, run_id: list[str]) -> None:
    """Copy the run's log to `out`, folding tracebacks and the app's packaging warnings away."""
    skipping = None
    for line in lines:
        match = STARTED.search(line)
        if match:
            run_id.append(match.group(1))
        if line.startswith("Traceback (most recent call last):"):
            skipping = "traceback"
            continue
        if skipping == "traceback":
            if not line[:1].isspace():
                skipping = None  # the exception's own line ends the traceback: the launcher says it in one line
            continue
        if line.startswith("Flower App configuration warnings in"):
            skipping = "warnings"
            continue
        if skipping == "warnings":
            if line.startswith("- "):
                continue
            skipping = None
        out.write(line)
        out.flush()
