"""federated_learning.py, watched from inside, for the secure-aggregation tests.

    RECORD=PATH python -m tests.recording_coordinator ARGS...

With --aggregation server it saves, per round, each client's trained weights and the
round's start (what the clients would hide). With --aggregation secure|trusted it saves
every reply that reaches the coordinator while it aggregates. All into PATH (torch.save).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import federated_learning as fl  # noqa: E402
from fl_tutorial.privacy import peer_sum  # noqa: E402
from fl_tutorial.pysyft import client_training, exits  # noqa: E402
from fl_tutorial.remote import websocket_clients  # noqa: E402

RECORDED = {"updates": [], "replies": []}


def save():
    torch.save(RECORDED, os.environ["RECORD"])


def main():
    train_visit, average = client_training.train_visit, peer_sum.PeerSum.average
    aggregating = [False]

    def recording_train_visit(worker, model, *args, **kwargs):
        start = {k: v.clone() for k, v in model.state_dict().items()}
        weights = train_visit(worker, model, *args, **kwargs)
        if weights is not None:
            RECORDED["updates"].append({"client": worker.id, "start": start, "weights": weights})
            save()
        return weights

    def recording_average(self, updates, start):
        aggregating[0] = True
        try:
            return average(self, updates, start)
        finally:
            aggregating[0] = False
            save()

    Client = websocket_clients.make_client_class()
    send = Client._send_msg_and_deserialize

    def recording_send(self, command, *args, **kwargs):
        reply = send(self, command, *args, **kwargs)
        if aggregating[0]:
            RECORDED["replies"].append({"from": self.id, "command": command, "reply": reply})
        return reply

    client_training.train_visit = recording_train_visit
    peer_sum.PeerSum.average = recording_average
    Client._send_msg_and_deserialize = recording_send
    sys.argv[0] = fl.__file__
    exits.run(fl.main)


if __name__ == "__main__":
    main()
