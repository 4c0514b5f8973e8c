"""The ServerApp: Flower's FedAvg on SimpleCNN, the global model tested on the server after each round.

It prints what the script prints (the clients' table, then `Test set: ...` after
each round) and writes the same metrics JSON and plot (fl_tutorial/report.py),
so that one reader, and `make compare`, serve both.
"""
import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flower_twin import config, task
from fl_tutorial import files, mnist, partition, report

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

    def test_global_model(server_round, arrays):
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
        state = result.arrays.to_torch_state_dict()
        rescue_name = "flower-twin-model-{}.pt".format(time.strftime("%Y%m%d-%H%M%S"))
        saved, error = files.write_or_rescue(settings.save_model, lambda f: torch.save(state, f), rescue_name)
        if error is not None:
            raise RunError("could not save the model to {} ({}); it is saved in {} instead.".format(
                settings.save_model, error.strerror or error, saved))
        print("Saved the model to {}".format(saved), flush=True)


def wait_for_clients(grid, count):
    """The node ids of `count` connected SuperNodes, or RunError after WAIT_FOR_CLIENTS_S."""
    deadline = time.time() + WAIT_FOR_CLIENTS_S
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.time() > deadline:
            raise RunError("num-clients={} but only {} SuperNode(s) connected within {} s".format(
                count, len(nodes), WAIT_FOR_CLIENTS_S))
        time.sleep(0.5)


def describe_clients(grid, nodes):
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
        raise RunError("the SuperNodes hold partitions {}; each of 0 to {} is needed once (--node-config "
                       "partition-id)".format(indexes, len(nodes) - 1))
    return sorted(clients, key=lambda c: c.pop("index")), names


def check_replies(replies, asked, names):
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
            raise RunError("{} failed: {}".format(name_of(reply.metadata.src_node_id, names), reply.error.reason))
    silent = [node for node in asked if node not in answered]
    if silent:
        reasons = {r.error.reason for r in replies if r.has_error()}
        raise RunError("{} stopped answering{}; the run stops here".format(
            ", ".join(name_of(node, names) for node in silent), ": " + " ".join(sorted(reasons)) if reasons else ""))


def name_of(node, names):
    return "{} (SuperNode {})".format(names[node], node) if node in names else "SuperNode {}".format(node)


class TwinFedAvg(FedAvg):
    """Flower's FedAvg, every client in every round; a failed client ends the run instead of being skipped,

    and the replies are averaged in client order, so that a seed gives the same numbers on every run.
    """

    def __init__(self, num_clients, names):
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=num_clients,
                         min_available_nodes=num_clients, train_metrics_aggr_fn=mean_train_loss)
        self.names, self.asked, self.client_losses, self.round_started = names, [], {}, time.time()

    def configure_train(self, server_round, arrays, train_config, grid):
        self.round_started = time.time()
        messages = list(super().configure_train(server_round, arrays, train_config, grid))
        self.asked = [m.metadata.dst_node_id for m in messages]
        return messages

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        check_replies(replies, self.asked, self.names)
        replies.sort(key=lambda r: r.content["metrics"]["partition-id"])
        metrics = [r.content["metrics"] for r in replies]
        self.client_losses = {task.client_name(int(m["partition-id"])): m["train-loss"] for m in metrics}
        return super().aggregate_train(server_round, replies)


def mean_train_loss(records, weight_key):
    """The clients' training loss, weighted by their sample counts (the one metric worth averaging)."""
    weights = [r["metrics"][weight_key] for r in records]
    losses = [r["metrics"]["train-loss"] for r in records]
    return MetricRecord({"train-loss": sum(w * l for w, l in zip(weights, losses)) / sum(weights)})
