"""VirtualWorkers that train on their own share (`--workers virtual --train-on client`).

At the FedAvg paper's scale (100 clients, batches of 10) the course's loop, a
syft message for every layer of every step, costs several times the arithmetic.
A virtual data owner, like a websocket one (fl_tutorial/remote/worker.py), takes one
`fit` request per visit: the weights and the batches' indices go in as a syft
worker command (serialised as between processes), the client trains with plain
PyTorch on the share it keeps, and the weights come back. The coordinator keeps
no pointer to the data.
"""
import torch

from fl_tutorial.pysyft import client_training
from fl_tutorial.pysyft.owners import ClientError


def make_owner_class(sy):
    """sy.VirtualWorker with syft's `fit` worker command, as fl_tutorial/remote/worker.py's DataOwner has it."""

    class VirtualDataOwner(sy.VirtualWorker):
        def fit(self, dataset_key, **kwargs):
            """The coordinator's side: one worker command through syft's messages; the reply, deserialised."""
            message = self.create_worker_command_message("train_share", None, dataset_key, **kwargs)
            reply = sy.serde.deserialize(self._recv_msg(sy.serde.serialize(message)))
            if isinstance(reply, dict) and "error" in reply:
                raise self.error("did not train: {}; the run stops here".format(reply["error"]))
            return reply

        def train_share(self, dataset_key, weights, passes, settings):
            """The data owner's side (the worker command): plain PyTorch on the share it keeps."""
            return client_training.fit_share(self, dataset_key, weights, passes, settings, train_only=False)

        def error(self, text):
            return ClientError("{} {}".format(self.id, text))

    return VirtualDataOwner


def send_shares(sy, workers, images, labels, parts, rule):
    """Step 2: each data owner gets its share to keep, tagged as a websocket owner tags the share it loads.

    Returns the federated dataset of stand-ins (client_training.py's
    Share: where each share is and its size), which syft's FederatedDataLoader
    draws the same batches from as from pointers.
    """
    client_training.draw_as_federate(rule)  # the random numbers after this are .federate()'s run's
    shares = []
    for worker, part in zip(workers, parts):
        index = torch.from_numpy(part)
        for tensor, tag in ((images.index_select(0, index), "#data"), (labels.index_select(0, index), "#target")):
            tensor.tag(*client_training.SHARE_TAGS, tag).send(worker, garbage_collect_data=False)  # the owner's now
        shares.append(client_training.Share(worker, len(part)))
    return sy.FederatedDataset(shares)
