"""A client for the secure-aggregation tests: fl_tutorial.worker, watched from inside.

    PEER_RECORD=DIR python -m tests.peer_worker --id client3 ...   saves every share it receives from
                                                                   another client into DIR (torch.save)
    PEER_DIE=1 python -m tests.peer_worker --id client3 ...        dies (exit status 9) when the first share
                                                                   arrives: a client lost during aggregation
"""
import os

import torch

from fl_tutorial.privacy import peer_sum
from fl_tutorial.remote import worker


def main():
    real = peer_sum.Holder.receive_share
    record, die = os.environ.get("PEER_RECORD"), os.environ.get("PEER_DIE")

    def receive_share(self, round_id, sender, share):
        if die:
            os._exit(9)
        if record:
            torch.save(share, os.path.join(record, "{}-{}-from-{}.pt".format(round_id, self.id, sender)))
        return real(self, round_id, sender, share)

    peer_sum.Holder.receive_share = receive_share
    worker.run()


if __name__ == "__main__":
    main()
