"""The twin's flags and run config: the script's meanings and checks, one clear message for a bad value."""
import os
import sys

import pytest

from flower_twin import config, task
from flower_twin import launch as launcher
from twin_helpers import ROOT, assert_one_clear_error, launch


def run_config(**changes):
    values = config.defaults()
    values.update({key.replace("_", "-"): value for key, value in changes.items()})
    return values


def test_the_defaults_are_the_comparisons_default():
    settings = config.settings(config.defaults())
    assert (settings.num_clients, settings.rounds, settings.local_epochs, settings.partition, settings.seed) == (
        2, 1, 1, "iid", 1)
    assert (settings.lr, settings.batch_size, settings.dropout, settings.data_dir) == (0.01, 64, 0.1, "./data")
    assert settings.shards_per_client is settings.dirichlet_alpha is settings.max_batches is None
    assert settings.metrics_out is None


def test_noniid_deals_two_shards_unless_told_otherwise():
    assert config.settings(run_config(partition="noniid")).shards_per_client == 2
    dirichlet = config.settings(run_config(partition="noniid", dirichlet_alpha=0.5))
    assert (dirichlet.shards_per_client, dirichlet.dirichlet_alpha) == (None, 0.5)


@pytest.mark.parametrize("changes, complaint", [
    ({"num_clients": 0}, "num-clients=0: must be >= 1"),
    ({"num_server_rounds": 2.5}, "num-server-rounds=2.5: '2.5' is not an integer"),
    ({"lr": -1}, "lr=-1: must be > 0.0"),
    ({"lr": "fast"}, "lr must be a number"),
    ({"seed": 2 ** 32}, "must be below 2**32"),
    ({"dropout": 1.0}, "must be below 1"),
    ({"batch_size": True}, "batch-size must be a number"),
    ({"partition": "random"}, 'partition must be one of "iid", "noniid"'),
    ({"device": "tpu"}, 'device must be one of "auto", "cpu", "cuda", "mps"'),
    ({"shards_per_client": 3}, 'need partition="noniid"'),
    ({"partition": "noniid", "shards_per_client": 3, "dirichlet_alpha": 0.5}, "choose one of"),
    ({"data_dir": ""}, "data-dir must be a path"),
    ({"epochs": 3}, "unknown run config key epochs"),
    ({"clients_per_round": 3}, 'clients-per-round="3": there are only 2 clients'),
    ({"target_accuracy": 1.5}, "target-accuracy=1.5: must be at most 1"),
    ({"test_every": 0}, "test-every=0: must be >= 1"),
    ({"prox_mu": -0.1}, "prox-mu=-0.1: must be >= 0.0"),
    ({"batch_size": "half"}, 'batch-size must be a number or "full"'),
])
def test_a_bad_run_config_value_gets_one_message_naming_the_key(changes, complaint):
    with pytest.raises(config.ConfigError) as error:
        config.settings(run_config(**changes))
    assert complaint in str(error.value)


def test_the_papers_settings_mean_what_the_scripts_flags_mean():
    settings = config.settings(run_config(num_clients=100, clients_per_round=10, batch_size="full", prox_mu=0.01,
                                          target_accuracy=0.97, test_every=5))
    assert (settings.clients_per_round, settings.batch_size, settings.prox_mu) == (10, "full", 0.01)
    assert (settings.target_accuracy, settings.test_every) == (0.97, 5)
    off = config.settings(config.defaults())  # 0 stands for a flag left out
    assert (off.clients_per_round, off.target_accuracy, off.prox_mu, off.test_every) == (None, None, 0.0, 1)


def test_a_full_batch_that_cannot_fit_is_refused_with_the_scripts_message():
    from fl_tutorial.core import memory

    problem = memory.batch_problem(task.SimpleCNN, "full", 1000, largest_share=30000, available=10 ** 10)
    assert problem.startswith("--batch-size full: the largest share, 30000 samples, is one batch. --batch-size 30000")
    assert memory.batch_problem(task.SimpleCNN, "full", 1000, largest_share=600, available=10 ** 10) is None


def test_the_run_config_file_is_what_flwr_reads_back(tmp_path):
    from flwr.common.config import parse_config_args

    values = run_config(data_dir='/tmp/a "quoted" dir', lr=0.05, num_clients=3)
    assert parse_config_args([config.write_overrides(str(tmp_path / "run.toml"), values)]) == values


@pytest.mark.parametrize("flags, complaint", [
    (["--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
    (["--lr", "x"], "argument --lr: 'x' is not a number"),
    (["--seed", "-1"], "argument --seed: must be >= 0"),
    (["--partition", "skewed"], "argument --partition: invalid choice"),
    (["--shards-per-client", "3"], 'need partition="noniid"'),
    (["--strategy", "sequential"], "argument --strategy: invalid choice"),
    (["--device", "tpu"], "argument --device: invalid choice"),
    (["--client-data-dirs", "a,b"], "--client-data-dirs is for --engine deployment"),
    (["--engine", "deployment", "--client-data-dirs", "a"], "names 1 folder(s) for 2 clients"),
    (["--metrics-out", "/proc/nope/m.json"], "--metrics-out /proc/nope/m.json: cannot write in /proc/nope"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["--target-accuracy", "97"], "argument --target-accuracy: must be at most 1"),
    (["--clients-per-round", "5"], "there are only 2 clients"),
])
def test_bad_flags_are_usage_errors(capsys, flags, complaint):
    with pytest.raises(SystemExit) as exit_info:
        launcher.parse_args(flags)
    assert exit_info.value.code == 2
    assert complaint in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("flags, words", [
    (["--num-clients", "700"], ["--num-clients 700: more clients than the 640 training samples"]),
    (["--partition", "noniid", "--shards-per-client", "400"], ["--shards-per-client 400"]),
    (["--device", "cuda"], ["error: device cuda is not available here"]),
    (["--device", "mps"], ["error: device mps is not available here"]),
])
def test_what_would_fail_later_fails_before_any_process_starts(mnist_dir, flags, words):
    result = launch("--data-dir", mnist_dir, *flags, timeout=120)
    assert_one_clear_error(result, *words)
    assert "SuperLink" not in result.stdout


@pytest.mark.slow
def test_missing_data_says_where_to_put_it(tmp_path):
    # Nothing listens on port 9 of 127.0.0.1: the download fails at once, as it does offline.
    result = launch("--data-dir", str(tmp_path / "empty"), env={"MNIST_MIRRORS": "http://127.0.0.1:9/"}, timeout=120)
    assert_one_clear_error(result, "MNIST in", "is missing or damaged")


def test_every_run_of_make_fedavg_paper_is_valid_on_the_twin(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import fedavg_paper

    runs = list(fedavg_paper.runs())
    assert len(runs) == 7
    for name, flags, _ in runs:
        command = fedavg_paper.command("flower", ["--data-dir", str(tmp_path), "--lr", "0.1", *flags])
        assert command[1:3] == ["-m", "flower_twin.launch"]
        _, settings, _ = launcher.parse_args(command[3:])  # a usage error would end the test here
        assert (settings.num_clients, settings.clients_per_round, settings.target_accuracy) == (100, 10, 0.99), name
        assert settings.batch_size == ("full" if name.endswith("fedsgd") else 10)
