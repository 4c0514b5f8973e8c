"""Child processes that never outlive their parent, and what they said last: for client processes and SuperNodes."""
import ctypes
import signal


def die_with_parent():
    """Linux: the kernel sends SIGTERM to the child when its parent dies, even by SIGKILL (a Popen preexec_fn)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def log_tail(path, lines=3):
    """The last non-empty lines of a process's log (what it said before it stopped), or []."""
    try:
        with open(path, errors="replace") as f:
            return [line.rstrip() for line in f.readlines()[-lines:] if line.strip()]
    except OSError:
        return []
