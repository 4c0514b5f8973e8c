"""Client processes that this run starts on 127.0.0.1, and stops again whatever happens.

Each client is `python -m fl_tutorial.worker` on a free port it picks itself
(--port 0, so no other program can take the port between choosing and binding),
with a fresh random token that only this user can read. Each runs in its own
session, so a Ctrl-C in the terminal reaches the coordinator alone, which then
stops them in order; on Linux they also die with the coordinator if it is killed.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from fl_tutorial.core.processes import die_with_parent, log_tail
from fl_tutorial.remote import security

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
READY = re.compile(r"^(\S+) ready on wss?://([^\s:]+):(\d+) ")
START_TIMEOUT = 120  # seconds; a client first normalises its copy of MNIST
STOP_TIMEOUT = 5


class StartError(RuntimeError):
    """A client process did not come up; the message quotes the end of its log."""


class LocalClients:
    """Context manager: start one worker process per id; yields [(id, host, port)] and the token."""

    def __init__(self, ids, data_dir, token_file=None, extra_args=(), python=None, module="fl_tutorial.worker",
                 args_for=None):
        self.ids, self.data_dir, self.token_file, self.extra_args = ids, data_dir, token_file, list(extra_args)
        self.args_for = args_for or {}  # id -> its own arguments instead of extra_args (the aggregator's)
        self.python = python or sys.executable  # the PySyft environment's; `make compare` runs from the twin's
        self.module = module  # the tests start malicious clients this way
        self.procs, self.folder = {}, None

    def __enter__(self):
        self.folder = tempfile.mkdtemp(prefix="fl-clients-")
        try:
            if self.token_file:
                token, token_file = security.read_token(self.token_file), self.token_file
            else:
                token_file = self.token_file = os.path.join(self.folder, "token")
                token = security.write_new_token(token_file)
            for worker_id in self.ids:
                self.procs[worker_id] = self._start(worker_id, token_file)
            addresses = [self._wait_ready(worker_id) for worker_id in self.ids]
        except BaseException:
            self.stop()
            raise
        return addresses, token

    def __exit__(self, *exc):
        self.stop()
        return False

    def log_path(self, worker_id):
        return os.path.join(self.folder, worker_id + ".log")

    def _start(self, worker_id, token_file):
        command = [self.python, "-m", self.module, "--id", worker_id, "--host", "127.0.0.1",
                   "--port", "0", "--data-dir", self.data_dir, "--token-file", token_file] + self.args_for.get(
                       worker_id, self.extra_args)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [PROJECT, os.environ.get("PYTHONPATH")])),
                   PYTHONUNBUFFERED="1")
        with open(self.log_path(worker_id), "wb") as log:
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True, preexec_fn=die_with_parent)

    def _wait_ready(self, worker_id):
        proc, deadline = self.procs[worker_id], time.time() + START_TIMEOUT
        while time.time() < deadline:
            for line in self.log_tail(worker_id, lines=1000):
                match = READY.match(line)
                if match and match.group(1) == worker_id:
                    return worker_id, match.group(2), int(match.group(3))
            if proc.poll() is not None:
                raise StartError("{} stopped at start (exit status {}): {}".format(
                    worker_id, proc.returncode, " | ".join(self.log_tail(worker_id)) or "no output"))
            time.sleep(0.05)
        raise StartError("{} did not start within {} s".format(worker_id, START_TIMEOUT))

    def log_tail(self, worker_id, lines=3):
        return log_tail(self.log_path(worker_id), lines)

    def died(self):
        """The ids of the clients whose process has ended."""
        return [worker_id for worker_id, proc in self.procs.items() if proc.poll() is not None]

    def stop(self):
        """SIGTERM to every client, SIGKILL to any still there after STOP_TIMEOUT s; then tidy up."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.time() + STOP_TIMEOUT
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = {}
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
