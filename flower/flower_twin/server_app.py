"""The ServerApp: Flower's FedAvg on SimpleCNN, the global model tested on the server after each round.

It prints what the script prints (the clients' table, then `Test set: ...` after
each round) and writes the same metrics JSON and plot (fl_tutorial/core/report.py),
so that one reader, and `make compare`, serve both.
"""
import time
from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fl_tutorial.core import files, mnist, partition, report
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
    metrics = report.Metrics(settings.as_script_args(), clients, settings.metrics_out, settings.plot)
    strategy = TwinFedAvg(settings.num_clients, names)

    def test_global_model(server_round: int, arrays: ArrayRecord) -> None:
        """Step 6 on the server: test the round's global model; record the round."""
        if server_round == 0:
            return None  # the script tests after each round only
        model.load_state_dict(arrays.to_torch_state_dict())
        test_loss, accuracy, per_class = task.test(model, test_images, test_labels, settings.test_batch_size, device)
        metrics.add({"epoch": server_round, "train_loss": strategy.client_losses, "test_loss": test_loss,
                     "test_accuracy": accuracy, "test_accuracy_per_class": per_class,
                     "seconds": time.time() - strategy.round_started})
        return None

    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=settings.rounds,
                            timeout=REPLY_TIMEOUT_S, train_config=ConfigRecord({}), evaluate_fn=test_global_model)
    if settings.save_model:  # as the script saves it: atomically, or elsewhere if that fails now
        try:
            print(files.save_model(result.arrays.to_torch_state_dict(), settings.save_model, "flower-twin"),
                  flush=True)
        except files.Rescued as error:
            raise RunError(str(error)) from None


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


class TwinFedAvg(FedAvg):
    """Flower's FedAvg, every client in every round; a failed client ends the run instead of being skipped,

    and the replies are averaged in client order, so that a seed gives the same numbers on every run.
    """

    def __init__(self, num_clients: int, names: dict[int, str]) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=num_clients,
                         min_available_nodes=num_clients, train_metrics_aggr_fn=mean_train_loss)
        self.names, self.asked, self.client_losses, self.round_started = names, [], {}, time.time()

    def configure_train(self, server_round: int, arrays: ArrayRecord, train_config: ConfigRecord,
                        grid: Grid) -> list[Message]:
        self.round_started = time.time()
        messages = list(super().configure_train(server_round, arrays, train_config, grid))
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


def mean_train_loss(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """The clients' training loss, weighted by their sample counts (the one metric worth averaging)."""
    weights = [r["metrics"][weight_key] for r in records]
    losses = [r["metrics"]["train-loss"] for r in records]
    return MetricRecord({"train-loss": sum(w * loss for w, loss in zip(weights, losses, strict=True)) / sum(weights)})
