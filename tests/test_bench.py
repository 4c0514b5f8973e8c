"""`make bench` runs every loop it names and prints one row each (its numbers are for the README, not asserted)."""
import os
import subprocess
import sys

import pytest

from helpers import ROOT, write_mnist

sys.path.insert(0, os.path.join(ROOT, "tools"))
import bench  # noqa: E402


@pytest.mark.slow
def test_the_benchmark_runs_every_loop_and_prints_its_row(tmp_path):
    data = write_mnist(tmp_path, n_train=1000)  # (g) has 100 clients: 10 samples each
    done = subprocess.run([sys.executable, os.path.join("tools", "bench.py"), "--data-dir", data, "--max-batches", "2"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| (")]
    assert [row.split(" | ")[0][2:] for row in rows] == list(bench.LOOPS.values())
    assert "ratios to (a" in done.stdout and "ratios to (a3), in this run" in done.stdout
