"""No code on the wire: real exploits, sent both ways, are refused and run nothing (fl_tutorial/pysyft/wire.py).

A pickle whose __reduce__ creates a marker file stands for any code: a malicious
client sends it in reply to model.get(), a token-holding coordinator sends it to
a worker. Each test first shows that the attack is real (what syft 0.2.6 would
do), then that it is refused, and by whom.
"""
import io
import itertools
import json
import os
import re
import zlib

import pytest
import torch

from evil_worker import exploit_pickle
from fl_tutorial.pysyft import wire
from fl_tutorial.pysyft.owners import ClientError
from fl_tutorial.remote import security, websocket_clients
from fl_tutorial.remote.local_clients import LocalClients
from helpers import FAST, assert_clean_exit, run_script


@pytest.fixture
def marker(tmp_path):
    path = str(tmp_path / "marker")
    yield path
    assert not os.path.exists(path), "the exploit ran: {} exists".format(path)


def exploit_message(sy, marker, monkeypatch):
    """A real syft message (an ObjectMessage with a tensor) whose tensor is the exploit's pickle."""
    from syft.messaging.message import ObjectMessage
    from syft.serde.msgpack import torch_serde

    monkeypatch.setattr(torch_serde, "torch_tensor_serializer", lambda owner, tensor: exploit_pickle(marker))
    message = sy.serde.serialize(ObjectMessage(torch.ones(3)))
    monkeypatch.undo()
    return message


def test_the_exploit_is_real_torch_load_would_run_it(tmp_path):
    path = str(tmp_path / "ran")
    with pytest.raises(Exception):  # noqa: B017  (torch.load complains, whatever it says, only after the pickle ran)
        torch.load(io.BytesIO(exploit_pickle(path)))
    assert os.path.exists(path)


def test_a_tensor_pickle_that_names_anything_but_a_tensors_parts_is_refused(sy, hook, marker, monkeypatch):
    message = exploit_message(sy, marker, monkeypatch)
    with pytest.raises(wire.Refused, match=r"a tensor whose pickle asks for io\.open, refused before it was looked up"):
        sy.serde.deserialize(message)


def tar_archive():
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        member = tarfile.TarInfo("storages")
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"  # torch.load would extract, then read it
        tar.addfile(member)
    return out.getvalue()


@pytest.mark.parametrize("payload", [tar_archive(), b"PK\x03\x04" + bytes(60)], ids=["tar", "zip"])
def test_only_torch_saves_own_format_is_read_not_tar_or_zip(sy, hook, payload, monkeypatch):
    from syft.messaging.message import ObjectMessage
    from syft.serde.msgpack import torch_serde

    monkeypatch.setattr(torch_serde, "torch_tensor_serializer", lambda owner, tensor: payload)
    message = sy.serde.serialize(ObjectMessage(torch.ones(3)))
    monkeypatch.undo()
    with pytest.raises(wire.Refused, match="a tensor that is not in torch.save's format"):
        sy.serde.deserialize(message)


def test_real_tensors_and_parameters_still_round_trip_bit_for_bit(sy, hook):
    for value in (torch.randn(3, 4), torch.arange(10), torch.nn.Parameter(torch.randn(2, 2))):
        back = sy.serde.deserialize(sy.serde.serialize(value))
        assert torch.equal(back, value) and back.dtype == value.dtype and type(back) is type(value)


def test_a_type_name_is_refused_not_resolved(sy, hook):
    # syft would resolve it with pydoc.locate, which imports the module it names.
    message = sy.serde.serialize(os.system.__class__)
    with pytest.raises(wire.Refused, match="a message part of a kind this side does not accept: builtins.type"):
        sy.serde.deserialize(message)


def test_torchscript_is_refused(sy, hook):
    import msgpack
    from syft.serde import compression
    from syft.serde.msgpack import serde

    code = serde.msgpack_global_state.simplifiers[torch.jit.ScriptModule][0]  # syft would torch.jit.load it
    message = bytes([compression.NO_COMPRESSION]) + msgpack.dumps((code, (b"a TorchScript archive",)))
    with pytest.raises(wire.Refused, match="does not accept: torch.jit"):
        sy.serde.deserialize(message)


def test_deep_nesting_is_refused(sy, hook):
    nested = ()
    for _ in range(wire.MAX_DEPTH + 5):
        nested = (nested,)
    with pytest.raises(wire.Refused, match="nested deeper than 64 levels"):
        sy.serde.deserialize(sy.serde.serialize(nested))


@pytest.mark.slow
def test_a_decompression_bomb_is_refused_before_it_fills_memory(sy, hook):
    from syft.serde import compression

    squeeze = zlib.compressobj()
    chunk = bytes(2 ** 20)
    bomb = b"".join(squeeze.compress(chunk) for _ in range(wire.MAX_MESSAGE_BYTES // 2 ** 20 + 10)) + squeeze.flush()
    assert len(bomb) < 2 ** 20  # 266 MB of zeros in under 1 MB
    with pytest.raises(wire.Refused, match="a message of more than 256 MB"):
        sy.serde.deserialize(bytes([compression.ZLIB]) + bomb)


@pytest.mark.parametrize("garbage", [b"", b"\x00", b"\x28", b"\x29\x04\x22\x4d\x18", b"\x2a\x78\x9c\x01",
                                     b"\x28\xdb\xff\xff\xff\xff", b"\x28\x92\x01\x02\x03"])
def test_garbage_is_refused_as_unreadable(sy, hook, garbage):
    with pytest.raises(wire.Refused):
        sy.serde.deserialize(garbage)


# --- a real worker, and a token-holding coordinator that attacks it ----------------------------------------

NAMES = itertools.count(1)


@pytest.fixture
def worker(tmp_path, mnist_dir):
    """A real worker process. Its name is new to this test process: syft gives a second worker of an
    old name the first one's address."""
    token_file = str(tmp_path / "token")
    security.write_new_token(token_file)
    clients = LocalClients(["owner{}".format(next(NAMES))], mnist_dir, token_file)
    with clients as (addresses, token):
        yield addresses[0], token, clients


def connect(hook, worker):
    (name, host, port), token, _ = worker
    return websocket_clients.make_client_class()(hook, host, port, name, token=token)


def refusals(clients):
    return [line for line in clients.log_tail(clients.ids[0], 50) if "refused a message" in line]


def still_serving(hook, worker):
    """A new connection is served: the worker survived and kept going."""
    client = connect(hook, worker)
    try:
        assert client.search(["#nothing"]) == []
    finally:
        client.close()


@pytest.mark.slow
def test_a_worker_refuses_an_exploit_from_a_coordinator_that_has_the_token(sy, hook, worker, marker, monkeypatch):
    from syft.serde.msgpack import torch_serde

    client = connect(hook, worker)
    monkeypatch.setattr(torch_serde, "torch_tensor_serializer", lambda owner, tensor: exploit_pickle(marker))
    with pytest.raises(ClientError, match="closed the connection"):
        torch.ones(3).send(client)
    monkeypatch.undo()
    client.close()
    (line,) = refusals(worker[2])
    assert re.search(r"\[owner\d+\] refused a message from 127\.0\.0\.1:\d+ \(a tensor whose pickle asks for io\.open, "
                     r"refused before it was looked up\); closing the connection$", line), line
    still_serving(hook, worker)


def command(sy, name, target, args):
    from syft.messaging.message import TensorCommandMessage

    return TensorCommandMessage.computation(name, target, args, {}, (sy.ID_PROVIDER.pop(),), False)


@pytest.mark.slow
def test_a_function_outside_training_is_refused_though_syft_would_run_it(sy, hook, worker, tmp_path):
    path = str(tmp_path / "written-by-torch.save")
    virtual = sy.VirtualWorker(hook, id="stock-syft")  # syft 0.2.6 as it comes: the command writes the file
    hook.local_worker.send_msg(command(sy, "torch.save", None, (torch.ones(2).send(virtual), path)), virtual)
    assert os.path.exists(path)
    os.remove(path)

    client = connect(hook, worker)
    pointer = torch.ones(2).send(client)
    pointer.child.garbage_collect_data = False  # the worker drops this connection: nothing to delete there later
    with pytest.raises(ClientError):
        hook.local_worker.send_msg(command(sy, "torch.save", None, (pointer, path)), client)
    assert not os.path.exists(path)
    assert "a function this worker does not run: torch.save" in refusals(worker[2])[-1]
    still_serving(hook, worker)


@pytest.mark.slow
@pytest.mark.parametrize("name, target, says", [
    ("clear_objects", "self", "a method this worker does not run: clear_objects"),
    ("apply_", 0, "a method this worker does not run on its objects: apply_"),
])
def test_methods_outside_training_are_refused(sy, hook, worker, name, target, says):
    client = connect(hook, worker)
    if target == 0:
        pointer = torch.ones(2).send(client)
        pointer.child.garbage_collect_data = False  # the worker drops this connection: nothing to delete later
        target = pointer.id_at_location
    with pytest.raises(ClientError):
        hook.local_worker.send_msg(command(sy, name, target, ()), client)
    assert says in refusals(worker[2])[-1]
    still_serving(hook, worker)


@pytest.mark.slow
def test_a_worker_command_outside_training_is_refused(hook, worker):
    client = connect(hook, worker)
    with pytest.raises(ClientError):
        client._send_msg_and_deserialize("load_data", data=[])
    assert "a worker command this worker does not run: load_data" in refusals(worker[2])[-1]
    still_serving(hook, worker)


# --- a malicious client, and the coordinator it attacks ----------------------------------------------------

@pytest.mark.slow
def test_the_coordinator_refuses_an_exploit_in_reply_to_model_get(tmp_path, mnist_dir, marker, monkeypatch):
    """client1 answers its second model.get() with the exploit: epoch 1 finishes, epoch 2 stops, nothing runs."""
    token_file = str(tmp_path / "token")
    security.write_new_token(token_file)
    monkeypatch.setenv("EVIL_MARKER", marker)
    monkeypatch.setenv("EVIL_AFTER", "20")  # one honest model.get(): weights and gradients (measured: 20 tensors)
    metrics = str(tmp_path / "metrics.json")
    evil = LocalClients(["client1", "client2"], mnist_dir, token_file, module="tests.evil_worker")
    with evil as (addresses, _):
        connect_flag = ",".join("{}={}:{}".format(*address) for address in addresses)
        result = run_script("--workers", "websocket", "--connect", connect_flag, "--token-file", token_file,
                            "--data-dir", mnist_dir, "--epochs", "3", "--metrics-out", metrics, *FAST)
    assert result.returncode == 1
    assert_clean_exit(result)
    assert result.stderr.strip().splitlines()[-1] == (
        "error: client1 at 127.0.0.1:{} sent a reply that this side refuses: a tensor whose pickle asks for "
        "io.open, refused before it was looked up; the run stops here".format(addresses[0][2]))
    with open(metrics) as f:
        assert len(json.load(f)["epochs"]) == 1  # the finished epoch is kept
