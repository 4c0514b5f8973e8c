"""What syft 0.2.6 may take off the wire here: no code, only the parts that training sends.

syft turns a received tensor back into a tensor with `torch.load`, that is, with
pickle, and the sender picks the strategy: whoever can talk to a worker, or
answer the coordinator, could run any code on the other side. It also resolves
type names sent as text (`pydoc.locate`, which imports modules), loads
TorchScript, and calls any method a message names. Installed by import_syft(),
so on both sides (federated_learning.py and python -m fl_tutorial.worker):

- tensors are unpickled by an unpickler that knows only the globals a torch 1.4
  tensor needs (TENSOR_GLOBALS) and refuses any other before it is looked up;
- a message may hold only the kinds of parts that training sends (PARTS): no type
  names, no TorchScript; pointers only to POINTED_ATTRIBUTES, and on a worker
  only to its own objects; nesting deeper than MAX_DEPTH is refused;
- a message that would decompress to more than MAX_MESSAGE_BYTES is refused
  before it does, and anything that cannot be read (bad hex, bad compression,
  bad msgpack, a part that does not fit) is refused the same way.

What a worker may be told to run is checked in fl_tutorial/remote/worker.py (MESSAGES,
COMMANDS, FUNCTIONS, METHODS, WORKER_METHODS below). Each list is what the whole
test suite and a run of every websocket mode send, measured with
FL_TUTORIAL_WIRE_RECORD=FILE (every part, global, pointed attribute and command
seen is appended to FILE, and nothing is refused), and nothing more.
"""
import io
import os
import pickle
import sys
import threading
import zlib

import torch

RECORD_ENV = "FL_TUTORIAL_WIRE_RECORD"
MAX_DEPTH = 64  # levels of parts in a message (training's go 6 deep)
MAX_MESSAGE_BYTES = 256 * 2 ** 20  # a message, decompressed: one client's whole share (--data-from server) is 188 MB

# torch.save of a tensor (torch 1.4's format): how it starts, and the only globals its pickle names.
TORCH_SAVE_START = b"\x80\x02"
TENSOR_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"),
    ("collections", "OrderedDict"),
    ("torch", "FloatStorage"),
    ("torch", "LongStorage"),
}
# The kinds of message parts (syft's msgpack types) that training sends, both ways. Shares, fixed
# precision, VirtualWorkers and communication actions are --aggregation's (with VirtualWorkers, whose
# messages go through the same checks). Not here, and so refused: type names (which syft resolves with
# pydoc.locate, importing modules), TorchScript (torch.jit.load), Plans, numpy arrays.
PARTS = {
    "builtins.str", "builtins.tuple", "builtins.list", "builtins.dict", "builtins.set", "builtins.slice",
    "torch.Tensor", "torch.nn.parameter.Parameter", "torch.Size",
    "syft.generic.pointers.pointer_tensor.PointerTensor",
    "syft.messaging.message.TensorCommandMessage", "syft.messaging.message.ForceObjectDeleteMessage",
    "syft.messaging.message.IsNoneMessage", "syft.messaging.message.ObjectMessage",
    "syft.messaging.message.ObjectRequestMessage", "syft.messaging.message.GetShapeMessage",
    "syft.messaging.message.WorkerCommandMessage", "syft.messaging.message.SearchMessage",
    "syft.execution.computation.ComputationAction", "syft.execution.communication.CommunicationAction",
    "syft.frameworks.torch.tensors.interpreters.additive_shared.AdditiveSharingTensor",
    "syft.frameworks.torch.tensors.interpreters.precision.FixedPrecisionTensor",
    "syft.workers.virtual.VirtualWorker",
}
# A pointer may point at an attribute of the object (syft then getattr()s the whole dotted path):
POINTED_ATTRIBUTES = {None, "data", "grad", "grad.data"}
POINTER = "syft.generic.pointers.pointer_tensor.PointerTensor"
# What a token-holding coordinator may make a worker do (fl_tutorial/remote/worker.py checks these):
MESSAGES = {"TensorCommandMessage", "ForceObjectDeleteMessage", "IsNoneMessage", "ObjectMessage",
            "ObjectRequestMessage", "GetShapeMessage", "WorkerCommandMessage", "SearchMessage"}
COMMANDS = {"load_share", "fit", "clear_objects", "_log_msgs",  # worker commands (WorkerCommandMessage)
            "share_update", "receive_share", "sum_shares"}  # --aggregation secure|trusted (peer_aggregation.py)
FUNCTIONS = {"torch.nn.functional.conv2d", "torch.nn.functional.relu", "torch.nn.functional.max_pool2d",
             "torch.nn.functional.linear", "torch.nn.functional.dropout", "torch.nn.functional.cross_entropy",
             "torch.stack"}  # torch.stack: the course's FederatedDataLoader, with --data-from server
METHODS = {"add_", "zero_", "detach_", "backward", "flatten", "index_select", "__getitem__"}  # on tensors, pointers
WORKER_METHODS = set()  # on the worker itself: none
# A train-only data owner (python -m fl_tutorial.worker --train-only) takes its share's rule, training
# requests and cleanup, and nothing else: no tensor command, no request for an object, no search
# (subsets of the lists above; a test checks it).
TRAIN_ONLY_MESSAGES = {"WorkerCommandMessage"}
TRAIN_ONLY_COMMANDS = {"load_share", "fit", "clear_objects", "_log_msgs", "share_update", "receive_share",
                       "sum_shares"}
# --aggregation trusted's aggregator (python -m fl_tutorial.worker --aggregator) holds no data: it takes
# shares and sums them, nothing else.
AGGREGATOR_COMMANDS = {"receive_share", "sum_shares", "clear_objects", "_log_msgs"}


class Refused(Exception):
    """A message, or a part of it, that this side does not accept; none of it was run.

    The text names the sender when it is known (a websocket client) and what was refused.
    """


_state = threading.local()  # the peer a reply is being read from, and the nesting depth


RECORD_PATH = os.environ.get(RECORD_ENV)  # read once: the checks run for every part of every message


def record(kind, value):
    """With FL_TUTORIAL_WIRE_RECORD=FILE: append `kind value` to FILE (to measure the allow-lists)."""
    if RECORD_PATH:
        with open(RECORD_PATH, "a") as f:
            f.write("{}\t{}\n".format(kind, value))


def recording():
    return bool(RECORD_PATH)


def refuse(what):
    raise Refused(what)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        record("global", "{}.{}".format(module, name))
        if (module, name) not in TENSOR_GLOBALS and not recording():
            refuse("a tensor whose pickle asks for {}.{}, refused before it was looked up".format(module, name))
        return super().find_class(module, name)


class _RestrictedPickle:
    """A `pickle_module` for torch.load: its Unpickler and load() find only TENSOR_GLOBALS."""

    Unpickler = _RestrictedUnpickler

    @staticmethod
    def load(f, **kwargs):
        return _RestrictedUnpickler(f, **kwargs).load()


def load_tensor(worker, tensor_bin):
    """syft's torch deserialisation strategy, through the restricted unpickler.

    torch 1.4's torch.save writes pickle protocol 2; torch.load would also take a
    tar archive (extracted to disk) or a zip file: neither is accepted.
    """
    if not isinstance(tensor_bin, bytes) or not tensor_bin.startswith(TORCH_SAVE_START):
        refuse("a tensor that is not in torch.save's format")
    try:
        return torch.load(io.BytesIO(tensor_bin), pickle_module=_RestrictedPickle)
    except Refused:
        raise
    except Exception as error:  # truncated or corrupted: not a tensor
        refuse("a tensor that cannot be read ({}: {})".format(type(error).__name__, error))


SMALL = 2 ** 16  # compressed bytes that are decompressed in one go (lz4's ratio is at most 255:1, zlib's 1032:1)


def decompress(binary):
    """syft's decompression (its first byte names the scheme), stopped at MAX_MESSAGE_BYTES."""
    import lz4.frame  # syft's, as its compression module below: imported once syft is
    from syft.serde import compression

    scheme, body = binary[0], binary[1:]
    if len(body) <= SMALL and scheme in (compression.LZ4, compression.ZLIB):  # at most 1032:1: stays small
        out = lz4.frame.decompress(body) if scheme == compression.LZ4 else zlib.decompress(body)
        complete = True
    elif scheme == compression.LZ4:  # syft's frames declare their size: allocate that, never more than the cap
        declared = lz4.frame.get_frame_info(body)["content_size"]
        if declared > MAX_MESSAGE_BYTES:
            refuse("a message of more than {} MB".format(MAX_MESSAGE_BYTES // 2 ** 20))
        limit = declared or MAX_MESSAGE_BYTES
        decompressor = lz4.frame.LZ4FrameDecompressor()
        out = decompressor.decompress(body, max_length=limit + 1)
        complete = decompressor.eof and len(out) <= limit
    elif scheme == compression.ZLIB:
        decompressor = zlib.decompressobj()
        out = decompressor.decompress(body, MAX_MESSAGE_BYTES + 1)
        complete = decompressor.eof
    elif scheme == compression.NO_COMPRESSION:
        out, complete = body, True
    else:
        refuse("a message with an unknown compression ({})".format(scheme))
    if len(out) > MAX_MESSAGE_BYTES:
        refuse("a message of more than {} MB".format(MAX_MESSAGE_BYTES // 2 ** 20))
    if not complete:
        refuse("a message whose compressed data is cut short")
    return out


def receiving_from(peer):
    """The coordinator reads the next reply in this thread from `peer` (a name and an address)."""
    _state.peer = peer


def install(sy):
    """Put the checks into syft's deserialisation (idempotent)."""
    from syft.serde import compression
    from syft.serde.msgpack import serde, torch_serde
    from syft.serde.protobuf import torch_serde as protobuf_torch_serde
    from syft.serde.torch import serde as torch_strategies

    if getattr(serde, "_fl_tutorial_wire", False):
        return
    if recording():
        print("fl_tutorial.wire: {} is set: recording what arrives, refusing nothing".format(RECORD_ENV),
              file=sys.stderr, flush=True)
    serde.msgpack_global_state.update()
    names = {code: _type_name(t) for t, (code, _) in serde.msgpack_global_state.simplifiers.items()}
    names.update({code: _type_name(t) for t, (code, _) in serde.msgpack_global_state.forced_full_simplifiers.items()})
    real_detail, real_deserialize = serde._detail, serde.deserialize

    def detail(worker, obj, **kwargs):
        if type(obj) in (list, tuple):
            if len(obj) != 2 or type(obj[0]) is not int:
                refuse("a malformed message part")
            name = names.get(obj[0]) or "an unknown kind of part ({})".format(obj[0])
            if RECORD_PATH:
                record("part", name)
            elif name not in PARTS:
                refuse("a message part of a kind this side does not accept: {}".format(name))
            if name == POINTER:
                _check_pointer(worker, obj[1], real_detail)
            depth = getattr(_state, "depth", 0)
            if depth >= MAX_DEPTH:
                refuse("a message nested deeper than {} levels".format(MAX_DEPTH))
            _state.depth = depth + 1
            try:
                return real_detail(worker, obj, **kwargs)
            finally:
                _state.depth = depth
        return obj

    def deserialize(binary, worker=None):
        outer = not getattr(_state, "active", False)
        if outer:
            _state.active, _state.depth = True, 0
        try:
            return real_deserialize(binary, worker)
        except Refused as error:
            refused = error
        except Exception as error:  # bad compression, bad msgpack, a part that does not fit ...
            refused = Refused("a message that cannot be read ({}: {})".format(type(error).__name__, str(error)[:200]))
        finally:
            peer = getattr(_state, "peer", None)
            if outer:
                _state.active, _state.peer = False, None
        if outer and peer:  # the coordinator, reading a client's reply
            raise Refused("{} sent a reply that this side refuses: {}; the run stops here".format(peer, refused))
        raise refused

    serde._detail = detail
    compression._decompress = decompress
    serde.deserialize = sy.serde.msgpack.deserialize = deserialize  # syft.serde.deserialize's default strategy
    for module in (torch_serde, protobuf_torch_serde, torch_strategies):
        module.torch_tensor_deserializer = load_tensor
    serde._fl_tutorial_wire = True


def _check_pointer(worker, fields, real_detail):
    """A pointer part: only to the attributes pointers use, and, on a worker, only to its own objects.

    syft follows a pointer's dotted attribute path with getattr(); on a worker
    (accepts_foreign_pointers False) a pointer elsewhere would be a pointer to a
    worker it does not know, whose deletion fails later, out of sight.
    """
    if not isinstance(fields, (list, tuple)) or len(fields) != 8:
        refuse("a malformed pointer")
    location, attribute = real_detail(worker, fields[2]), real_detail(worker, fields[3])
    record("pointed-attribute", attribute)
    if attribute not in POINTED_ATTRIBUTES and not recording():
        refuse("a pointer to an attribute path this side does not follow: {}".format(str(attribute)[:200]))
    if not getattr(worker, "accepts_foreign_pointers", True) and location != worker.id:
        refuse("a pointer to an object on another worker ({})".format(str(location)[:200]))


def _type_name(kind):
    return "{}.{}".format(kind.__module__, kind.__qualname__)
