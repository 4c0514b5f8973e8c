"""The twin's run configuration: [tool.flwr.app.config] in pyproject.toml, checked in one place.

Each key means what the script's flag of the same name means (FLAGS), so that
`make flower ARGS="--num-clients 3"` and `flwr run flower --run-config "num-clients=3"`
run the same experiment as `python federated_learning.py --strategy fedavg --num-clients 3`.
TOML has no "unset": 0 and "" stand for a flag left out.
"""
import argparse
import os
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass

import tomli_w

from fl_tutorial.core import cli, partition, sampling

APP_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # the app, not its linked copy

# The script's flag -> (run config key, argparse type: the script's own checks).
FLAGS = {
    "--num-clients": ("num-clients", cli.positive_int),
    "--epochs": ("num-server-rounds", cli.positive_int),
    "--local-epochs": ("local-epochs", cli.positive_int),
    "--clients-per-round": ("clients-per-round", cli.positive_int),
    "--prox-mu": ("prox-mu", cli.non_negative_float),
    "--target-accuracy": ("target-accuracy", cli.fraction),
    "--test-every": ("test-every", cli.positive_int),
    "--lr": ("lr", cli.positive_float),
    "--batch-size": ("batch-size", cli.batch_size),
    "--test-batch-size": ("test-batch-size", cli.positive_int),
    "--seed": ("seed", cli.seed),
    "--partition": ("partition", str),
    "--shards-per-client": ("shards-per-client", cli.positive_int),
    "--dirichlet-alpha": ("dirichlet-alpha", cli.positive_float),
    "--dropout": ("dropout", cli.probability),
    "--max-batches": ("max-batches", cli.positive_int),
    "--data-dir": ("data-dir", str),
    "--metrics-out": ("metrics-out", str),
    "--plot": ("plot", str),
    "--save-model": ("save-model", str),
    "--device": ("device", str),
}
CHOICES = {"partition": ("iid", "noniid"), "device": ("auto", "cpu", "cuda", "mps")}
# 0: the flag is not given
OFF_WHEN_ZERO = {"shards-per-client", "dirichlet-alpha", "max-batches", "clients-per-round", "target-accuracy"}
PATHS = ("data-dir", "metrics-out", "plot", "save-model")
CLIENT_FAILED = 101  # the error code of a ClientApp's reply that says, in one line, why it cannot go on


class ConfigError(ValueError):
    """A run config value the twin cannot run with; the message names the key and what to do."""


@dataclass(frozen=True)
class Settings:
    num_clients: int
    rounds: int
    local_epochs: int
    clients_per_round: int | None
    prox_mu: float
    target_accuracy: float | None
    test_every: int
    lr: float
    batch_size: int | str  # or "full": each client's whole share in one batch (FedSGD)
    test_batch_size: int
    seed: int
    partition: str
    shards_per_client: int | None
    dirichlet_alpha: float | None
    dropout: float
    max_batches: int | None
    data_dir: str
    metrics_out: str | None
    plot: str | None
    save_model: str | None
    device: str

    def rule(self) -> dict:
        """How the training set is split: the script's rule, and so the same shares."""
        return partition.rule(self.partition, self.num_clients, self.seed, self.shards_per_client,
                              self.dirichlet_alpha)

    def as_script_args(self) -> dict:
        """The script's names for these settings, for the metrics file (one reader serves both)."""
        values = asdict(self)
        values["epochs"] = values.pop("rounds")
        return dict(values, strategy="fedavg", aggregation="server", system="flower")


def defaults() -> dict:
    """[tool.flwr.app.config] of the app's pyproject.toml."""
    with open(os.path.join(APP_DIR, "pyproject.toml"), "rb") as f:
        return dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


def settings(run_config: dict) -> Settings:
    """Check a whole run config (defaults plus overrides); returns Settings or raises ConfigError."""
    keys = {key: kind for key, kind in FLAGS.values()}
    unknown = sorted(set(run_config) - set(keys))
    if unknown:
        raise ConfigError(f"unknown run config key {unknown[0]}; the keys are: {', '.join(sorted(keys))}")
    values = {}
    for key, kind in keys.items():
        if key not in run_config:
            raise ConfigError(f"run config key {key} is missing")
        values[key] = _value(key, kind, run_config[key])
    try:  # the script's own check and completion of the split (fl_tutorial/core/partition.py)
        rule = partition.rule(values["partition"], values["num-clients"], values["seed"],
                              values["shards-per-client"], values["dirichlet-alpha"], spell=run_config_key)
    except partition.PartitionError as error:
        raise ConfigError(str(error)) from None
    values["shards-per-client"] = rule["shards_per_client"]
    problem = sampling.problem(values["clients-per-round"], values["num-clients"], spell=run_config_key)
    if problem:
        raise ConfigError(problem)
    return Settings(
        num_clients=values["num-clients"], rounds=values["num-server-rounds"], local_epochs=values["local-epochs"],
        clients_per_round=values["clients-per-round"], prox_mu=values["prox-mu"],
        target_accuracy=values["target-accuracy"], test_every=values["test-every"], lr=values["lr"],
        batch_size=values["batch-size"], test_batch_size=values["test-batch-size"],
        seed=values["seed"], partition=values["partition"], shards_per_client=values["shards-per-client"],
        dirichlet_alpha=values["dirichlet-alpha"], dropout=values["dropout"], max_batches=values["max-batches"],
        data_dir=values["data-dir"], metrics_out=values["metrics-out"], plot=values["plot"],
        save_model=values["save-model"], device=values["device"])


def run_config_key(name: str, value: str | None = None) -> str:
    """How a run config writes a setting, for the script's messages: name, or name="value"."""
    return name if value is None else f'{name}="{value}"'


def _value(key: str, kind: Callable[[str], object], value: object) -> object:
    """One value, checked as the script checks its flag; 0 or "" where that means 'not given'."""
    if key in OFF_WHEN_ZERO and value == 0 and not isinstance(value, bool):
        return None
    if key == "batch-size" and value == "full":
        return value
    if key in PATHS:
        if not isinstance(value, str) or (key == "data-dir" and not value):
            raise ConfigError(f"{key} must be a path in quotes, got {value!r}")
        return value or None
    if key in CHOICES:
        if value not in CHOICES[key]:
            choices = ", ".join(f'"{c}"' for c in CHOICES[key])
            raise ConfigError(f"{key} must be one of {choices}, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        either = ' or "full"' if key == "batch-size" else ""
        raise ConfigError(f"{key} must be a number{either}, got {value!r}")
    try:
        return kind(str(value))
    except argparse.ArgumentTypeError as error:
        raise ConfigError(f"{key}={value}: {error}") from None


def write_overrides(path: str, values: dict) -> str:
    """A run config file for `flwr run --run-config FILE` (a file, as a string of pairs cannot hold spaces)."""
    with open(path, "wb") as f:
        tomli_w.dump(values, f)
    return path
