"""The ClientApp: a data owner that trains the received SimpleCNN on its own share and sends it back.

Which share is its own comes from its node config (partition-id, num-partitions,
and data-dir for the folder that holds its MNIST): a SuperNode's --node-config in
deployment, set by Flower in simulation. The samples never leave it; the reply
holds the weights and the sample count that FedAvg weighs them by.
"""
from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_tutorial.core import memory, mnist, partition
from flower_twin import config, task

app = ClientApp()


def my_share(context: Context) -> tuple[config.Settings, int, torch.Tensor, torch.Tensor]:
    """(settings, index, images, labels) of this client, from the run config and its node config."""
    settings = config.settings(context.run_config)
    index = int(context.node_config["partition-id"])
    if int(context.node_config["num-partitions"]) != settings.num_clients:
        raise config.ConfigError(f"this SuperNode is one of {context.node_config['num-partitions']} partitions, "
                                 f"but the run has num-clients={settings.num_clients}")
    data_dir = str(context.node_config.get("data-dir", settings.data_dir))
    images, labels = task.load_share(data_dir, tuple(settings.rule().items()), index)
    return settings, index, images, labels


def answer(msg: Message, context: Context, work: Callable[..., dict]) -> Message:
    """work(settings, index, images, labels) -> RecordDict; an expected failure becomes a one-line error reply."""
    try:
        return Message(RecordDict(work(*my_share(context))), reply_to=msg)
    except (config.ConfigError, mnist.DataError, partition.PartitionError, task.DeviceError) as error:
        name = partition.client_name(int(context.node_config.get("partition-id", -1)))
        reason = f"{name} cannot go on: {' '.join(str(error).split())}"  # one line
        return Message(Error(code=config.CLIENT_FAILED, reason=reason), reply_to=msg)


@app.query()
def describe(msg: Message, context: Context) -> Message:
    """Before training: who I am and what I hold (the script's start-up table)."""
    def work(settings: config.Settings, index: int, images: torch.Tensor, labels: torch.Tensor) -> dict:
        share = dict(partition.histogram(labels.numpy()), client=partition.client_name(index), index=index)
        return {"share": ConfigRecord(share)}

    return answer(msg, context, work)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Steps 4 and 5 of the course: the model arrives, trains here on my share, and goes back."""
    def work(settings: config.Settings, index: int, images: torch.Tensor, labels: torch.Tensor) -> dict:
        model = task.SimpleCNN(dropout=settings.dropout)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        round_config = msg.content["config"]
        server_round = int(round_config["server-round"])
        batch_size = memory.train_batch(settings.batch_size, len(labels))  # "full": my whole share (FedSGD)
        loss = task.train(model, images, labels, epochs=settings.local_epochs, lr=settings.lr, batch_size=batch_size,
                          seed=task.round_seed(settings.seed, server_round, index),
                          device=task.pick_device(settings.device), max_batches=settings.max_batches,
                          prox_mu=float(round_config.get("proximal-mu", 0.0)))  # Flower's FedProx sends it
        metrics = {"num-examples": len(labels), "train-loss": loss, "partition-id": index}
        return {"arrays": ArrayRecord(model.cpu().state_dict()), "metrics": MetricRecord(metrics)}

    return answer(msg, context, work)
