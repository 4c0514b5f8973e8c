"""Ctrl-C at any moment: every mode ends with `Interrupted.`, exit status 1, its finished epochs kept, nothing left.

A run is interrupted at several points: while Python and syft are still being imported,
and at staggered moments of training, where it lands on whatever line is running then.
With clients in their own processes, training through pointers deletes pointers all the
time, and a deletion runs in a pointer's __del__: where Ctrl-C landed there, syft 0.2.6
printed "Exception ignored", carried on over a broken connection and failed later with a
TypeError. The conftest fixture no_leftovers checks that no client process outlives a run.
"""
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from helpers import ROOT, assert_clean_exit, coordinator

# Seconds after the first line of training; each is one run, interrupted once.
STAGGERED = (0.0, 0.17, 0.41, 0.73, 1.1, 1.6)
MODES = {
    "course": [],
    "websocket-through-pointers": ["--workers", "websocket"],
    "websocket-fedavg-training-on-the-clients": ["--workers", "websocket", "--strategy", "fedavg"],
    "fedavg-secure": ["--strategy", "fedavg", "--aggregation", "secure"],
}


def interrupted(mnist_dir, tmp_path, flags, after_training_began=None, after_start=None):
    """Start a long run, send it SIGINT at the moment given, and return (process, stdout, stderr, metrics path)."""
    metrics = str(tmp_path / "metrics-{}.json".format(time.time()))
    proc = coordinator("--data-dir", mnist_dir, "--epochs", "1000", "--lr", "0.05", "--log-interval", "1",
                       "--metrics-out", metrics, *flags)
    lines, errors, training = [], [], threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Train "):
                training.set()

    readers = [threading.Thread(target=read, daemon=True),
               threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        if after_start is not None:
            time.sleep(after_start)
        else:
            assert training.wait(180), "training did not begin: " + "".join(lines)[-2000:]
            time.sleep(after_training_began)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the run went on for 60 s after Ctrl-C: " + "".join(lines)[-2000:])
        for reader in readers:
            reader.join(timeout=10)
        err = "".join(errors)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc, "".join(lines), err, metrics


def assert_interrupted(proc, out, err, metrics):
    assert proc.returncode == 1 and err == "Interrupted.\n", (proc.returncode, err[-3000:])
    assert_clean_exit(type("Result", (), {"stdout": out, "stderr": err}))
    try:
        with open(metrics) as f:
            finished = json.load(f)["epochs"]  # complete JSON, whatever line Ctrl-C landed on
    except FileNotFoundError:
        finished = []  # interrupted before the first epoch ended
    assert all("test_accuracy" in epoch for epoch in finished)


@pytest.mark.parametrize("mode", [
    pytest.param("websocket-through-pointers", marks=pytest.mark.slow),
    pytest.param("course", marks=pytest.mark.slow),
    pytest.param("websocket-fedavg-training-on-the-clients", marks=pytest.mark.slow),
    pytest.param("fedavg-secure", marks=pytest.mark.slow),
])
def test_ctrl_c_anywhere_in_training_ends_the_run_in_one_line(mnist_dir, tmp_path, mode):
    for offset in STAGGERED:
        assert_interrupted(*interrupted(mnist_dir, tmp_path, MODES[mode], after_training_began=offset))


def test_ctrl_c_while_python_and_syft_are_still_loading_ends_the_run_in_one_line(mnist_dir, tmp_path):
    for after_start in (0.3, 1.5):
        assert_interrupted(*interrupted(mnist_dir, tmp_path, MODES["websocket-through-pointers"],
                                        after_start=after_start))


def run_program(folder, body):
    """A program made of `body` (which calls exits.run) in its own Python: (CompletedProcess, seconds it took)."""
    code = textwrap.dedent("""
        import signal, sys, time
        sys.path.insert(0, {root!r})
        from fl_tutorial.pysyft import exits
    """).format(root=ROOT) + textwrap.dedent(body)
    started = time.time()
    done = subprocess.run([sys.executable, "-c", code], cwd=str(folder), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    return done, time.time() - started


def test_an_interrupt_that_lands_in_a_finalizer_waits_until_it_returns(tmp_path):
    # syft's pointers send their deletion from __del__, where Python swallows an exception ("Exception ignored")
    # and goes on. Here Ctrl-C lands in such a finalizer: the finalizer completes, then the program ends.
    done, seconds = run_program(tmp_path, """
        class Pointer:
            def __del__(self):
                signal.raise_signal(signal.SIGINT)  # Ctrl-C, while the deletion is half sent
                time.sleep(0.3)
                print("the finalizer finished its message", flush=True)

        def main():
            pointer = Pointer()
            del pointer
            time.sleep(10)
            print("the run went on", flush=True)

        exits.run(main)
    """)
    assert (done.returncode, done.stderr) == (1, "Interrupted.\n")
    assert done.stdout == "the finalizer finished its message\n" and seconds < 8


def test_an_interrupt_that_syft_swallows_comes_again_and_cleanup_is_not_disturbed(tmp_path):
    # syft 0.2.6's hooked tensor methods retry after `except BaseException` (and it has bare `except:` clauses):
    # a Ctrl-C landing there is swallowed, and training went on. It comes again until the program has ended,
    # but never into the cleanup that an interrupt on its way out runs.
    done, seconds = run_program(tmp_path, """
        def hooked_method():
            try:
                signal.raise_signal(signal.SIGINT)  # Ctrl-C, inside syft's try
            except BaseException:
                pass  # "if there's a type mismatch, try to fix it!"

        def main():
            try:
                hooked_method()
                print("the exception was swallowed", flush=True)
                for _ in range(200):
                    time.sleep(0.05)  # training goes on
                print("the run went on", flush=True)
            finally:
                time.sleep(0.5)  # stopping the clients, while the interrupt's timer would tick
                print("the cleanup finished", flush=True)

        exits.run(main)
    """)
    assert (done.returncode, done.stderr) == (1, "Interrupted.\n")
    assert done.stdout == "the exception was swallowed\nthe cleanup finished\n" and seconds < 8
