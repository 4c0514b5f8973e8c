"""What the twin's test files share (fixtures are in conftest.py): the launcher run as a user runs it, its
messages, and the sockets of the processes a test started.
"""
import ipaddress
import os
import subprocess
import sys
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from fake_mnist import write_mnist  # noqa: E402,F401  (the tests take it from here)
from flower_twin import processes  # noqa: E402

PYSYFT_PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
TEST_MARKER = "FLOWER_TWIN_TEST"
TEST_ID = uuid.uuid4().hex  # conftest.py puts it in the environment of every process a test starts


def launch(*args, timeout=600, env=None):
    """`python -m flower_twin.launch ARGS` as `make flower` runs it; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "flower_twin.launch", *args], cwd=ROOT,
                          env=dict(os.environ, **(env or {})), capture_output=True, text=True, timeout=timeout)


def start_launcher(*args):
    """The launcher in the background, for tests that interrupt or break a run."""
    return subprocess.Popen([sys.executable, "-m", "flower_twin.launch", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_one_clear_error(result, *words):
    """Exit 1 or 2, no traceback anywhere, and stderr's last line is one message that says `words`."""
    assert result.returncode in (1, 2), (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    for stream in (result.stdout, result.stderr):
        assert "Traceback" not in stream, stream[-3000:]
    last = error_lines(result)[-1]
    for word in words:
        assert word in last, last
    return last


def sockets_of_this_test():
    """(local, remote) addresses ("ip:port") of every TCP socket held by a process this test session started."""
    inodes = set()
    for pid in processes.marked(TEST_ID, TEST_MARKER):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with open(table) as f:
            for row in f.readlines()[1:]:
                fields = row.split()
                if fields[9] in inodes:
                    found.append(tuple(_address(fields[i], size) for i in (1, 2)))
    return found


def _address(text, size):
    """/proc/net/tcp's hex "ADDR:PORT" -> "ip:port" (IPv4-mapped IPv6 shown as IPv4)."""
    addr, port = text.split(":")
    raw = bytes.fromhex(addr)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word is little-endian
    ip = ipaddress.ip_address(raw)
    if size == 16 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return f"{ip}:{int(port, 16)}"


def is_loopback_or_unbound(address):
    ip = ipaddress.ip_address(address.rsplit(":", 1)[0])
    return ip.is_loopback or (ip.is_unspecified and address.endswith(":0"))
