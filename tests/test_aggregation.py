"""FedAvg without trusting the server: --aggregation trusted (Part 04) and secure (Part 10).

Both must end with the weights of --aggregation server, and must not show the
server what they promise to hide: a record of everything that reaches the
server's side during aggregation proves it.
"""
import io
import json

import numpy
import pytest
import torch

import federated_learning as fl
from fl_tutorial.core import mnist, report
from fl_tutorial.core.model import SimpleCNN
from fl_tutorial.experiment.fedavg import FedAvg, make_averaging
from fl_tutorial.privacy import aggregation
from fl_tutorial.privacy.fixed_point import PRECISION_FRACTIONAL
from helpers import CPU, args_for, assert_clean_exit, assert_usage_error, parse, peek, run_script, train_epochs

ROUNDS = 2


@pytest.fixture(scope="module")
def helpers(sy, hook):
    """The extra workers, once per session: syft keys workers by id."""
    def made(kind):
        return make_averaging(parse(["--strategy", "fedavg", "--aggregation", kind]), hook)

    return {"trusted": made("trusted"), "secure": made("secure"), "server": aggregation.ServerAverage()}


@pytest.mark.parametrize("flags", [
    pytest.param([], id="iid"),
    pytest.param(["--partition", "noniid", "--local-epochs", "2"], id="noniid", marks=pytest.mark.slow),
])
def test_trusted_and_secure_end_with_the_weights_of_server(sy, mnist_dir, workers, helpers, flags):
    # Round by round, each from the server's weights and random state: the clients train the very same
    # copies, so the rounds' results differ by the averaging alone. (Over several rounds, training would
    # amplify fixed point's 10^-8 by a factor that depends on the CPU.)
    mnist.ensure(mnist_dir)
    args = args_for(mnist_dir, "--strategy", "fedavg", *flags)
    torch.manual_seed(0)
    weights, rng = SimpleCNN().state_dict(), torch.get_rng_state()
    for _ in range(ROUNDS):
        ends = {}
        for kind in ("trusted", "secure", "server"):  # server last: its random state goes on
            torch.set_rng_state(rng)
            model = SimpleCNN()
            model.load_state_dict(weights)
            train_epochs(sy, args, model, workers, 1, helpers[kind])
            ends[kind] = model.state_dict()
        weights, rng = ends["server"], torch.get_rng_state()
        for name in weights:
            assert torch.allclose(ends["trusted"][name], weights[name], rtol=0, atol=1e-6), name  # float tolerance
            assert torch.allclose(ends["secure"][name], weights[name], rtol=0, atol=1e-6), name  # 10^-8 per client
        assert max((ends["secure"][n] - weights[n]).abs().max().item() for n in weights) > 0  # really fixed point


class ServerSide:
    """Everything that reaches the server during aggregation, and every tensor it decodes from fixed point."""

    def __init__(self, monkeypatch, local_worker):
        self.received, self.decoded = [], []
        real_send_msg = local_worker.send_msg

        def send_msg(message, location):
            response = real_send_msg(message, location)
            self.received.append(response)
            return response

        monkeypatch.setattr(local_worker, "send_msg", send_msg)
        real_decode = aggregation.SecureAggregation.decode

        def decode(shared_sum):
            value = real_decode(shared_sum)
            self.decoded.append(value.clone())
            return value

        monkeypatch.setattr(aggregation.SecureAggregation, "decode", staticmethod(decode))

    def tensors(self):
        """Plain torch tensors among what was received (pointers and shared tensors are not plain)."""
        found = []
        for item in self.received:
            for value in (item if isinstance(item, (list, tuple)) else [item]):
                if isinstance(value, torch.Tensor) and not hasattr(value, "child"):
                    found.append(value)
        return found


def updates_after_local_training(sy, mnist_dir, workers):
    """Two clients' copies after one round of local training, still on the clients, and plain copies of them."""
    mnist.ensure(mnist_dir)
    args = args_for(mnist_dir, "--strategy", "fedavg")
    federated, _ = fl.federated_mnist(args, tuple(workers))
    loader = sy.FederatedDataLoader(federated, batch_size=64, shuffle=True)
    torch.manual_seed(0)
    model = SimpleCNN()

    captured = {}

    class Capture(aggregation.Aggregation):
        def average(self, updates, start):
            captured["updates"] = updates
            return model.state_dict()

    progress = report.Progress("Round", 1, len(federated), 10 ** 9, stream=io.StringIO())
    FedAvg(args, Capture(), fl.train_steps, CPU, 64).round(model, loader, progress)
    updates = captured["updates"]
    plain = [(n, {name: peek(p) for name, p in m.named_parameters()}) for n, m in updates]
    return updates, plain


def test_secure_server_decodes_only_the_sums(sy, hook, mnist_dir, workers, helpers, monkeypatch):
    updates, plain = updates_after_local_training(sy, mnist_dir, workers)
    expected = aggregation.weighted_average(plain)
    side = ServerSide(monkeypatch, hook.local_worker)
    averaged = helpers["secure"].average(updates, start=None)
    # What the server decodes: exactly one tensor per parameter, each the weighted average.
    assert len(side.decoded) == len(expected)
    for decoded, name in zip(side.decoded, expected):
        assert torch.allclose(decoded, expected[name], rtol=0, atol=1e-5) and torch.equal(decoded, averaged[name])
    # What reaches it: no client's update, plain or in fixed point, scaled or not.
    received = side.tensors()
    assert received, "nothing was recorded: the check would prove nothing"
    weights = [n / sum(n for n, _ in plain) for n, _ in plain]
    for (_, update), weight in zip(plain, weights):
        for value in update.values():
            secrets_of_one = [value, value * weight,
                              (value * weight * 10 ** PRECISION_FRACTIONAL).long()]
            for tensor in received:
                for secret in secrets_of_one:
                    assert tensor.shape != secret.shape or not torch.allclose(
                        tensor.double(), secret.double(), rtol=0, atol=1e-3), "a single update reached the server"


def test_what_a_client_holds_of_another_clients_update_looks_random(sy, workers, helpers):
    client1, client2 = workers
    update = (torch.randn(1000) * 0.05).send(client1)  # the size of real weights
    encoded = (peek(update) * 10 ** PRECISION_FRACTIONAL).long()
    shared = helpers["secure"].share(update, [client1, client2])
    shares = {worker_id: pointer.location.get_obj(pointer.id_at_location).clone()  # read, no message sent
              for worker_id, pointer in shared.child.child.child.items()}
    held_by_client2 = shares["client2"]
    assert held_by_client2.dtype == torch.int64
    assert not torch.equal(held_by_client2, encoded)
    # Spread over the whole ring, not near the encoded values (|encoded| < 10^8 here).
    assert (held_by_client2.abs() > 2 ** 40).float().mean() > 0.99
    correlation = numpy.corrcoef(held_by_client2.double().numpy(), encoded.double().numpy())[0, 1]
    assert abs(correlation) < 0.2  # 1000 samples: independent values give |r| < 0.1 almost always
    # And the shares do add up (in Z_2^64, int64 wrap-around) to the encoding: the sum is exact.
    assert torch.equal(shares["client1"] + shares["client2"], encoded)


def test_trusted_server_receives_only_the_average(sy, hook, mnist_dir, workers, helpers, monkeypatch):
    updates, plain = updates_after_local_training(sy, mnist_dir, workers)
    expected = aggregation.weighted_average(plain)
    side = ServerSide(monkeypatch, hook.local_worker)
    helpers["trusted"].average(updates, start=None)
    received = side.tensors()
    assert len(received) == len(expected)
    for tensor, name in zip(received, expected):
        assert torch.allclose(tensor, expected[name], rtol=0, atol=1e-6)
        for _, update in plain:
            assert not torch.allclose(tensor, update[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("flags, message", [
    (["--aggregation", "secure"], "--aggregation secure is for --strategy fedavg"),
    (["--aggregation", "trusted", "--strategy", "sequential"], "--aggregation trusted is for --strategy fedavg"),
    (["--aggregation", "secure", "--strategy", "fedavg", "--num-clients", "1"], "needs at least 2 clients"),
    (["--aggregation", "trusted", "--strategy", "fedavg", "--workers", "websocket", "--num-clients", "1"],
     "--aggregation trusted needs at least 2 clients"),
    (["--aggregation", "secure", "--strategy", "fedavg", "--train-on", "client"],
     "with VirtualWorkers keeps the copies on the clients"),
    (["--aggregation", "sum"], "invalid choice"),
])
def test_combinations_that_cannot_work_get_the_usage_error(capsys, flags, message):
    assert_usage_error(capsys, flags, message)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["trusted", "secure"])
def test_the_script_runs_each_aggregation(mnist_dir, tmp_path, kind):
    metrics = str(tmp_path / "m.json")
    result = run_script("--strategy", "fedavg", "--aggregation", kind, "--epochs", "1", "--data-dir", mnist_dir,
                        "--lr", "0.05", "--metrics-out", metrics)
    assert result.returncode == 0, result.stderr
    assert_clean_exit(result)
    (round_,) = json.load(open(metrics))["epochs"]
    assert round_["aggregation_seconds"] > 0 and round_["test_accuracy"] > 0.5


@pytest.mark.slow
def test_secure_aggregation_of_a_round_that_only_one_client_trained_stops_with_one_message(mnist_dir):
    # --max-batches 1 ends FedAvg's round after client1's first batch: a secure sum of one update is that update.
    result = run_script("--strategy", "fedavg", "--aggregation", "secure", "--max-batches", "1",
                        "--data-dir", mnist_dir, "--log-interval", "1000")
    assert result.returncode == 1
    assert_clean_exit(result)
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: --aggregation secure: only client1 trained in this round (--max-batches ended it early)")
