"""The ServerApp: Flower's FedAvg (or FedProx) on SimpleCNN, the global model tested on the server.

It prints what the script prints (the clients' table, then `Test set: ...` after
each round) and writes the same metrics JSON and plot (fl_tutorial/core/report.py),
so that one reader, and `make compare`, serve both.
"""
import time
from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx

from fl_tutorial.core import files, mnist, partition, report, sampling
from flower_twin import config, task

app = ServerApp()
WAIT_FOR_CLIENTS_S = 120  # SuperNodes that are not connected by then are reported missing
REPLY_TIMEOUT_S = 3600  # one message's round trip; a SuperNode that dies is reported within 60 s by Flower


class RunError(RuntimeError):
    """The run cannot go on: a client is missing, failed or gone. One line, naming the client."""


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = config.settings(context.run_config)
    device = task.pick_device(settings.device)
    nodes = wait_for_clients(grid, settings.num_clients)
    clients, names = describe_clients(grid, nodes)  # asks each client for its share's size and labels
    print(partition.table(clients) + "\n", flush=True)

    torch.manual_seed(settings.seed)
    model = task.SimpleCNN(dropout=settings.dropout)  # step 3: build the model, on the server
    test_images, test_labels = mnist.load(settings.data_dir, train=False)
    metrics = report.Metrics(settings.as_script_args(), clients, settings.metrics_out, settings.plot,
                             settings.target_accuracy)
    sampler = settings.clients_per_round and sampling.ClientSampler(  # the script's draws: FedAvg's C*K a round
        partition.client_names(settings.num_clients), settings.clients_per_round, settings.seed)
    strategy = twin_strategy(settings, names, sampler)
    latest = ArrayRecord(model.state_dict())

    def test_global_model(server_round: int, arrays: ArrayRecord) -> None:
        """Step 6 on the server: test the round's global model (every test-every rounds, and the last); record
        the round; the first round that reaches target-accuracy ends the run, as on the script."""
        nonlocal latest
        if server_round == 0:
            return None  # the script tests after each round only
        latest = arrays
        record = {"epoch": server_round, "train_loss": strategy.client_losses}
        if sampler:
            record["clients"] = strategy.chosen
        if server_round % settings.test_every == 0 or server_round == settings.rounds:
            model.load_state_dict(arrays.to_torch_state_dict())
            tested = task.test(model, test_images, test_labels, settings.test_batch_size, device)
            record.update(zip(("test_loss", "test_accuracy", "test_accuracy_per_class"), tested, strict=True))
        metrics.add(dict(record, seconds=time.time() - strategy.round_started))
        if metrics.reached_target:
            raise TargetReached
        return None

    try:
        strategy.start(grid=grid, initial_arrays=latest, num_rounds=settings.rounds, timeout=REPLY_TIMEOUT_S,
                       train_config=ConfigRecord({}), evaluate_fn=test_global_model)
    except TargetReached:
        pass  # the rounds after it are not run
    metrics.summary()
    if settings.save_model:  # as the script saves it: atomically, or elsewhere if that fails now
        try:
            print(files.save_model(latest.to_torch_state_dict(), settings.save_model, "flower-twin"), flush=True)
        except files.Rescued as error:
            raise RunError(str(error)) from None


class TargetReached(Exception):  # noqa: N818  (not an error: the run's goal)
    """target-accuracy was reached: the run ends after this round, as the script's does."""


def wait_for_clients(grid: Grid, count: int) -> list[int]:
    """The node ids of `count` connected SuperNodes, or RunError after WAIT_FOR_CLIENTS_S."""
    deadline = time.time() + WAIT_FOR_CLIENTS_S
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.time() > deadline:
            raise RunError(f"num-clients={count} but only {len(nodes)} SuperNode(s) connected within "
                           f"{WAIT_FOR_CLIENTS_S} s")
        time.sleep(0.5)


def describe_clients(grid: Grid, nodes: list[int]) -> tuple[list[dict], dict[int, str]]:
    """The script's client table: each client's name, sample count and labels, in client order."""
    replies = grid.send_and_receive([Message(RecordDict({}), dst_node_id=n, message_type=MessageType.QUERY)
                                     for n in nodes], timeout=REPLY_TIMEOUT_S)
    check_replies(replies, nodes, names={})
    clients, names = [], {}
    for reply in replies:
        share = reply.content["share"]
        clients.append({"client": share["client"], "samples": share["samples"], "labels": list(share["labels"]),
                        "index": share["index"]})
        names[reply.metadata.src_node_id] = share["client"]
    indexes = sorted(c["index"] for c in clients)
    if indexes != list(range(len(nodes))):
        raise RunError(f"the SuperNodes hold partitions {indexes}; each of 0 to {len(nodes) - 1} is needed once "
                       "(--node-config partition-id)")
    return sorted(clients, key=lambda c: c.pop("index")), names


def check_replies(replies: Iterable[Message], asked: list[int], names: dict[int, str]) -> None:
    """Any failed or missing reply ends the run with one line naming the client.

    A SuperNode that stops answering is reported by Flower's SuperLink, after two
    missed heartbeats (within 60 s), as an error reply of the SuperLink's own.
    """
    replies = list(replies)
    answered = {r.metadata.src_node_id for r in replies if not r.has_error()}
    for reply in replies:
        if reply.has_error() and reply.metadata.src_node_id in asked:
            if reply.error.code == config.CLIENT_FAILED:  # the client said why, naming itself
                raise RunError(reply.error.reason)
            raise RunError(f"{name_of(reply.metadata.src_node_id, names)} failed: {reply.error.reason}")
    silent = [node for node in asked if node not in answered]
    if silent:
        reasons = {r.error.reason for r in replies if r.has_error()}
        said = ": " + " ".join(sorted(reasons)) if reasons else ""
        raise RunError(f"{', '.join(name_of(node, names) for node in silent)} stopped answering{said}; "
                       "the run stops here")


def name_of(node: int, names: dict[int, str]) -> str:
    return f"{names[node]} (SuperNode {node})" if node in names else f"SuperNode {node}"


class TwinRounds:
    """What the twin adds to Flower's FedAvg and FedProx. Each round trains the clients the script's sampler
    draws (all of them without clients-per-round); a failed client ends the run instead of being skipped; the
    replies are averaged in client order, so that a seed gives the same numbers on every run.
    """

    def __init__(self, names: dict[int, str], sampler: sampling.ClientSampler | None, num_clients: int,
                 **strategy_args: float) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=num_clients,
                         min_available_nodes=num_clients, train_metrics_aggr_fn=mean_train_loss, **strategy_args)
        self.names, self.sampler = names, sampler
        self.asked, self.chosen, self.client_losses, self.round_started = [], [], {}, time.time()

    def configure_train(self, server_round: int, arrays: ArrayRecord, train_config: ConfigRecord,
                        grid: Grid) -> list[Message]:
        self.round_started = time.time()
        messages = list(super().configure_train(server_round, arrays, train_config, grid))  # one per client
        self.chosen = self.sampler.next_round() if self.sampler else list(self.names.values())
        messages = [m for m in messages if self.names[m.metadata.dst_node_id] in self.chosen]
        self.asked = [m.metadata.dst_node_id for m in messages]
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        check_replies(replies, self.asked, self.names)
        replies.sort(key=lambda r: r.content["metrics"]["partition-id"])
        metrics = [r.content["metrics"] for r in replies]
        self.client_losses = {partition.client_name(int(m["partition-id"])): m["train-loss"] for m in metrics}
        return super().aggregate_train(server_round, replies)


class TwinFedAvg(TwinRounds, FedAvg):
    """Flower's FedAvg (McMahan et al. 2017), the script's --strategy fedavg."""


class TwinFedProx(TwinRounds, FedProx):
    """Flower's FedProx (Li et al. 2020), the script's --prox-mu: it sends mu to the clients, which add the
    proximal term (task.train)."""


def twin_strategy(settings: config.Settings, names: dict[int, str],
                  sampler: sampling.ClientSampler | None) -> TwinFedAvg | TwinFedProx:
    """FedProx where prox-mu is set, FedAvg otherwise: Flower's own strategies, each round's clients drawn by
    the script's sampler."""
    if settings.prox_mu:
        return TwinFedProx(names, sampler, settings.num_clients, proximal_mu=settings.prox_mu)
    return TwinFedAvg(names, sampler, settings.num_clients)


def mean_train_loss(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """The clients' training loss, weighted by their sample counts (the one metric worth averaging)."""
    weights = [r["metrics"][weight_key] for r in records]
    losses = [r["metrics"]["train-loss"] for r in records]
    return MetricRecord({"train-loss": sum(w * loss for w, loss in zip(weights, losses, strict=True)) / sum(weights)})
