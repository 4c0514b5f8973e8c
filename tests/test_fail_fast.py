"""Fail fast, lose nothing: impossible values stop before the work starts; a trained model survives a failed save."""
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from fl_tutorial.core import files, memory
from fl_tutorial.core.model import SimpleCNN
from helpers import ROOT, SCRIPT, assert_clean_exit, run_script

QUICK = ["--max-batches", "2", "--log-interval", "1000", "--lr", "0.05"]


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--save-model", "--metrics-out", "--plot"])
def test_an_output_path_that_cannot_be_written_stops_the_run_at_once(mnist_dir, flag):
    start = time.time()
    result = run_script("--data-dir", mnist_dir, flag, "/proc/nope/out.file", *QUICK)
    assert result.returncode == 2
    assert "error: {} /proc/nope/out.file: cannot write in /proc/nope".format(flag) in result.stderr
    assert "Train Epoch" not in result.stdout and time.time() - start < 20
    assert_clean_exit(result)


@pytest.mark.slow
def test_a_folder_is_not_a_file(mnist_dir, tmp_path):
    result = run_script("--data-dir", mnist_dir, "--save-model", str(tmp_path), *QUICK)
    assert result.returncode == 2 and "--save-model {}: it is a folder".format(tmp_path) in result.stderr


@pytest.mark.slow
def test_missing_folders_are_made(mnist_dir, tmp_path):
    model = tmp_path / "new" / "deeper" / "model.pt"
    result = run_script("--data-dir", mnist_dir, "--save-model", str(model), *QUICK)
    assert result.returncode == 0, result.stderr
    assert set(torch.load(str(model))) == set(SimpleCNN().state_dict())
    assert oct(os.stat(str(model)).st_mode & 0o777) == oct(0o666 & ~current_umask())


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.slow
def test_a_save_that_fails_after_training_keeps_the_model_and_says_where(mnist_dir, tmp_path):
    # The disk fills up just as the model is saved: it goes to the current folder instead.
    target = str(tmp_path / "models" / "model.pt")
    wrapper = textwrap.dedent("""
        import errno, runpy, sys
        sys.path.insert(0, {root!r})
        from fl_tutorial.core import files
        real = files.atomic_write
        def atomic_write(path, write):
            if path == {target!r}:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(path, write)
        files.atomic_write = atomic_write
        sys.argv = [{script!r}] + sys.argv[1:]
        runpy.run_path({script!r}, run_name="__main__")
    """).format(root=ROOT, target=target, script=SCRIPT)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    result = subprocess.run([sys.executable, "-c", wrapper, "--data-dir", mnist_dir, "--save-model", target, *QUICK],
                            cwd=str(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert result.returncode == 1
    assert_clean_exit(result)
    (rescued,) = os.listdir(str(workdir))
    assert rescued.startswith("federated_learning-model-") and rescued.endswith(".pt")
    assert result.stderr.strip() == ("error: could not save the model to {} (No space left on device); it is "
                                     "saved in {} instead.".format(target, workdir / rescued))
    assert set(torch.load(str(workdir / rescued))) == set(SimpleCNN().state_dict())
    assert not os.path.exists(target)


def test_the_rescue_goes_to_the_temp_folder_when_the_current_one_fails_too(tmp_path, monkeypatch):
    written = []
    real = files.atomic_write

    def atomic_write(path, write):
        if not path.startswith(str(tmp_path / "tmp")):
            raise OSError(28, "No space left on device")
        written.append(path)
        return real(path, write)

    monkeypatch.setattr(files, "atomic_write", atomic_write)
    monkeypatch.setattr(files.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    saved, error = files.write_or_rescue("/somewhere/model.pt", lambda f: f.write(b"model"), "rescued.pt")
    assert saved == str(tmp_path / "tmp" / "rescued.pt") and error.errno == 28
    assert open(saved, "rb").read() == b"model"


@pytest.mark.slow
def test_more_clients_than_samples_stops_before_any_client_exists(mnist_dir):
    start = time.time()
    result = run_script("--data-dir", mnist_dir, "--num-clients", "641", *QUICK)
    assert result.returncode == 2
    assert "--num-clients 641: more clients than the 640 training samples" in result.stderr
    assert time.time() - start < 30


@pytest.mark.slow
def test_a_batch_that_cannot_fit_in_memory_gets_a_message_not_the_oom_killer(mnist_dir):
    result = run_script("--data-dir", mnist_dir, "--batch-size", "100000000", *QUICK)
    assert result.returncode == 2
    assert_clean_exit(result)
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("federated_learning.py: error: --batch-size 100000000: one training batch of "
                              "SimpleCNN needs about ")
    assert "is available. --batch-size " in message and message.endswith(" or less fits.")


@pytest.mark.parametrize("available", [2 * 10 ** 9, 24 * 10 ** 9])
def test_the_suggested_batch_size_fits_and_the_next_power_does_not(available):
    make = SimpleCNN
    assert memory.check(make, 64, 1000, available=available) is None
    problem = memory.check(make, 10 ** 6, 1000, available=available)
    suggested = int(problem.split("--batch-size ")[-1].split()[0])
    assert memory.check(make, suggested, 1000, available=available) is None
    assert memory.check(make, suggested * 4, 1000, available=available) is not None


def test_the_memory_check_draws_no_random_numbers():
    torch.manual_seed(3)
    before = torch.get_rng_state()
    memory.check(SimpleCNN, 64, 1000)
    assert torch.equal(before, torch.get_rng_state())


def test_too_many_client_processes_for_this_machine_are_refused():
    assert memory.check_client_processes(10, available=24 * 10 ** 9) is None
    problem = memory.check_client_processes(200, available=24 * 10 ** 9)
    assert problem.startswith("--num-clients 200: starting 200 client processes on this machine needs about")
    assert "Start at most 32 here, or run clients on other machines (--connect)." in problem


@pytest.mark.slow
def test_virtual_clients_know_the_server_not_each_other():
    # syft's default links every VirtualWorker with every other one: O(N^2) to start N clients.
    # In a fresh interpreter: syft keys workers by id, and this session has its own client1, client2.
    code = textwrap.dedent("""
        import contextlib, sys, torch
        sys.path[:0] = [{root!r}, {tests!r}]
        import federated_learning as fl
        from fl_tutorial.experiment import owners
        from helpers import parse
        hook = fl.sy.TorchHook(torch)
        for flags in (["--num-clients", "300"],
                      ["--num-clients", "3", "--strategy", "fedavg", "--aggregation", "secure"]):
            with contextlib.ExitStack() as cleanup:
                clients = owners.create(parse(flags), hook, cleanup, fl.create_workers)
            print(len(clients), max(len(c._known_workers) for c in clients),
                  all(hook.local_worker._known_workers[c.id] is c for c in clients))
    """).format(root=ROOT, tests=os.path.join(ROOT, "tests"))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["300 1 True", "3 4 True"]  # secure: the server and the 3 clients


@pytest.mark.slow
def test_many_clients_with_small_shares_train(mnist_dir):
    # 100 clients of 6 or 7 samples: syft 0.2.6's hooked images[idx] misreads an index tensor of < 32 entries
    # as a tuple of indices; the shares are cut with index_select instead.
    result = run_script("--data-dir", mnist_dir, "--num-clients", "100", "--partition", "noniid",
                        "--shards-per-client", "1", *QUICK)
    assert result.returncode == 0, result.stderr
    rows = result.stdout.split("\n\n")[0].splitlines()[1:]
    assert len(rows) == 100 and sum(int(row.split()[1]) for row in rows) == 640
