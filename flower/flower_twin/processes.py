"""The processes of a local federation (SuperLink, SuperNodes and what they start), stopped whatever happens.

Each runs in its own session, so that Ctrl-C reaches the launcher alone, which
then stops them in order; on Linux they also get SIGTERM if the launcher dies.
Flower and Ray start processes of their own (SuperExec, ServerApp, ClientApps,
Ray's raylet and workers), some in sessions of their own: every process started
here carries a marker in its environment, which its descendants inherit, and on
Linux stop() ends every process that carries it.
"""
import os
import signal
import socket
import subprocess
import time
import uuid

from fl_tutorial.core.processes import die_with_parent, log_tail

MARKER = "FLOWER_TWIN_RUN"
STOP_TIMEOUT = 15  # s; Flower's SuperExec outlives its SuperNode by about 10 s
QUIET = 2  # s without a marked process before a sweep ends: a dying Ray process may still start its agents


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (servers here take a port number, not 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    """True once 127.0.0.1:port accepts connections; False if proc ends or timeout passes first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


class Processes:
    """Started processes by name, with their logs in `folder`; stop() ends them and everything they started."""

    def __init__(self, folder: str, env: dict[str, str]) -> None:
        self.folder, self.procs = folder, {}
        self.env = dict(env, **{MARKER: uuid.uuid4().hex})

    def start(self, name: str, command: list[str], **env: str) -> subprocess.Popen:
        """Start `command` as `name`, with the common environment plus `env`."""
        with open(self.log_path(name), "ab") as log:
            self.procs[name] = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                env=dict(self.env, **env), cwd=self.folder, start_new_session=True,
                                                preexec_fn=die_with_parent)
        return self.procs[name]

    def log_path(self, name: str) -> str:
        return os.path.join(self.folder, name + ".log")

    def log_tail(self, name: str, lines: int = 3) -> list[str]:
        return log_tail(self.log_path(name), lines)

    def ended(self) -> dict[str, int]:
        """Names of the processes that have ended, with their exit status."""
        return {name: proc.returncode for name, proc in self.procs.items() if proc.poll() is not None}

    def stop(self, name: str | None = None, sig: int = signal.SIGTERM) -> None:
        """Signal a process's whole session (or every process's); SIGKILL what is left after STOP_TIMEOUT."""
        names = [name] if name else list(self.procs)
        for n in names:
            _signal_group(self.procs[n], sig)
        deadline = time.time() + STOP_TIMEOUT
        for n in names:
            try:
                self.procs[n].wait(max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(self.procs[n], signal.SIGKILL)
            self.procs[n].wait()
        if name is None:
            self.sweep(deadline)

    def sweep(self, deadline: float) -> None:
        """Linux: end every process that carries this federation's marker (Ray's, in their own sessions),
        until none has been seen for QUIET seconds."""
        quiet_since = None
        while time.time() < deadline + STOP_TIMEOUT + QUIET:
            left = marked(self.env[MARKER])
            if not left:
                quiet_since = quiet_since or time.time()
                if time.time() - quiet_since >= QUIET:
                    return
                time.sleep(0.2)
                continue
            quiet_since = None
            for pid in left:
                try:
                    os.kill(pid, signal.SIGTERM if time.time() < deadline else signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.2)


def become_subreaper() -> None:
    """Linux: processes this one's descendants leave behind (Ray's agents, whose raylet is gone) become its
    children instead of init's, so that end_descendants() finds them all, marked or not."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def descendants(pid: int | None = None) -> list[tuple[int, str]]:
    """Linux: (pid, state) of every live or zombie descendant of `pid` (default: this process)."""
    parents = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                parents.setdefault(int(fields[1]), []).append((int(entry), fields[0]))
            except (OSError, IndexError, ValueError):
                continue
    found, todo = [], [pid or os.getpid()]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def end_descendants(timeout: float = STOP_TIMEOUT) -> None:
    """Before the launcher exits: SIGTERM, then SIGKILL, every descendant left, and reap them, until none is left."""
    deadline = time.time() + timeout
    while True:
        while True:  # reap what has ended (they are this process's children: become_subreaper())
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        alive = [pid for pid, state in descendants() if state != "Z"]
        if not alive and not [pid for pid, _ in descendants()]:
            return
        for pid in alive:
            try:
                os.kill(pid, signal.SIGTERM if time.time() < deadline else signal.SIGKILL)
            except OSError:
                pass
        if time.time() > deadline + STOP_TIMEOUT:
            return
        time.sleep(0.2)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # its own session: the process group has its id
        if sig == signal.SIGTERM:
            os.killpg(proc.pid, signal.SIGCONT)  # a stopped (frozen) process handles SIGTERM only once it runs
    except OSError:
        pass


def marked(value: str, name: str = MARKER) -> list[int]:
    """The pids of this user's processes whose environment holds NAME=value (Linux; [] elsewhere)."""
    needle = f"{name}={value}".encode()
    pids = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids
