"""A fuzzed command line: any mix of flags and values ends in a result or in one clear message.

Hypothesis draws flag combinations, valid and invalid. Every draw goes through
the argument checks; a sample of them runs the script itself on the small test
data with --max-batches 1. Allowed outcomes: exit 0, or exit 1 or 2 with one
clear message. Never a traceback, never a hang.
"""
import contextlib
import io
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import assert_clean_exit, parse, run_script

COUNTS = {"parsed": 0, "scripts": 0, "exit 0": 0, "exit 1": 0, "exit 2": 0}


def numbers(low, high):
    return st.one_of(st.integers(low, high).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.sampled_from(["", "x", "1e400", "-0", "1_0"]))


def output_paths(base):
    return st.sampled_from([os.path.join(base, "out", "file"), os.path.join(base, "out"), "/proc/nope/file",
                            os.path.join(base, "deep", "er", "file.json")])


def command_lines(base):
    values = {
        "--epochs": numbers(-1, 3), "--lr": numbers(-1, 2), "--batch-size": numbers(-1, 10 ** 6),
        "--test-batch-size": numbers(0, 10 ** 7), "--seed": numbers(-5, 2 ** 33), "--log-interval": numbers(0, 3),
        "--max-batches": numbers(0, 3), "--num-clients": numbers(0, 700), "--shards-per-client": numbers(0, 400),
        "--dirichlet-alpha": numbers(0, 2), "--local-epochs": numbers(0, 3), "--dropout": numbers(-1, 2),
        "--partition": st.sampled_from(["iid", "noniid", "IID", "bananas"]),
        "--strategy": st.sampled_from(["sequential", "fedavg", "avg"]),
        "--sync": st.sampled_from(["per-visit", "every-batch", "never"]),
        "--aggregation": st.sampled_from(["server", "trusted", "secure", "none"]),
        "--workers": st.sampled_from(["virtual", "websocket", "grid"]),
        "--data-from": st.sampled_from(["clients", "server", "elsewhere"]),
        "--connect": st.sampled_from(["client1", "client1=127.0.0.1:1", "a=h:99999", "a=127.0.0.1:9,a=127.0.0.1:8"]),
        "--token-file": st.sampled_from([os.path.join(base, "missing-token"), "/proc/nope"]),
        "--device": st.sampled_from(["cpu", "auto", "tpu"]),
        "--save-model": output_paths(base), "--metrics-out": output_paths(base), "--plot": output_paths(base),
    }
    sensible = {  # values that are each valid alone, so that whole runs are drawn too, not only usage errors
        "--epochs": st.sampled_from(["1", "2"]), "--lr": st.sampled_from(["0.05", "0.5", "1e-9"]),
        "--batch-size": st.sampled_from(["1", "7", "64", "640"]), "--test-batch-size": st.sampled_from(["1", "999"]),
        "--seed": st.sampled_from(["0", "7", "4294967295"]), "--num-clients": st.sampled_from(["1", "3", "5", "64"]),
        "--partition": st.sampled_from(["iid", "noniid"]), "--strategy": st.sampled_from(["sequential", "fedavg"]),
        "--aggregation": st.sampled_from(["server", "trusted", "secure"]), "--dropout": st.sampled_from(["0", "0.5"]),
        "--workers": st.sampled_from(["virtual", "websocket"]), "--sync": st.sampled_from(["per-visit", "every-batch"]),
        "--save-model": output_paths(base), "--metrics-out": output_paths(base), "--plot": output_paths(base),
    }
    wild = st.lists(st.sampled_from(sorted(values)), max_size=6, unique=True).flatmap(
        lambda chosen: st.tuples(*[values[f].map(lambda v, f=f: [f, v]) for f in chosen]))
    tame = st.lists(st.sampled_from(sorted(sensible)), max_size=5, unique=True).flatmap(
        lambda chosen: st.tuples(*[sensible[f].map(lambda v, f=f: [f, v]) for f in chosen]))
    return st.one_of(wild, tame).map(lambda pairs: [item for pair in pairs for item in pair])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    os.makedirs(str(folder / "out"), exist_ok=True)
    return str(folder)


def test_argument_checks_end_in_args_or_one_usage_error(base):
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(command_lines(base))
    def check(argv):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                parse(argv)
                code = 0
            except SystemExit as exit_:
                code = exit_.code
        COUNTS["parsed"] += 1
        assert code in (0, 2), argv
        if code == 2:
            lines = err.getvalue().strip().splitlines()
            assert lines[0].startswith("usage: ") and re.match(r"^\S+: error: ", lines[-1]), err.getvalue()
            assert "Traceback" not in err.getvalue()

    check()
    assert COUNTS["parsed"] >= 300


@pytest.mark.slow
def test_the_script_ends_in_a_result_or_one_message(mnist_dir, base):
    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
    @given(command_lines(base))
    def check(argv):
        result = run_script(*argv, "--data-dir", mnist_dir, "--max-batches", "1", "--log-interval", "1000",
                            timeout=240)  # a hang fails here
        COUNTS["scripts"] += 1
        assert result.returncode in (0, 1, 2), (argv, result.stderr)
        COUNTS["exit {}".format(result.returncode)] += 1
        assert_clean_exit(result)
        if result.returncode == 0:
            assert "Test set: Average loss" in result.stdout
        else:
            last = result.stderr.strip().splitlines()[-1]
            assert re.match(r"^(\S+: )?error: |^Interrupted\.$", last), (argv, result.stderr)

    check()
    assert COUNTS["scripts"] >= 20
    print("fuzz: {parsed} command lines parsed; {scripts} runs of the script: {exit 0} exit 0, {exit 1} exit 1, "
          "{exit 2} exit 2".format(**COUNTS))
