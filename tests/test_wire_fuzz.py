"""Fuzzing both ends of the wire (hypothesis), on 127.0.0.1 only, bounded in count and time.

The corpus is a real exchange: a coordinator loads a client's share, trains a
batch of SimpleCNN on it through pointers and brings the model back. Each case
takes one of its messages, or one of its replies, and breaks it: cut short,
bits flipped, bytes replaced or inserted, random bytes, a huge declared size,
deep nesting, text that is not hex, a binary frame.

- to a running worker (with the right token): every case ends in a reply or in
  the worker closing that connection, within the reply timeout; afterwards the
  worker is still running, serves a new connection, and printed no traceback;
- to the coordinator, from a fake worker: every case ends in a normal reply or
  in one of the two clean errors (a refusal, a lost client), never in another
  exception, within the reply timeout.

FL_TUTORIAL_FUZZ_CASES sets the number of cases per end (default 150; `make fuzz`: 5000).
"""
import asyncio
import binascii
import collections
import os
import threading
import time

import pytest
import torch.nn.functional as F
import websocket
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fl_tutorial.core.model import SimpleCNN
from fl_tutorial.pysyft import wire
from fl_tutorial.pysyft.owners import ClientError
from fl_tutorial.remote import security, websocket_clients
from fl_tutorial.remote.local_clients import LocalClients

pytestmark = pytest.mark.slow  # make test-all: fuzzing a running worker and coordinator

CASES = int(os.environ.get("FL_TUTORIAL_FUZZ_CASES", "150"))
CASE_SECONDS = websocket_clients.REPLY_TIMEOUT  # a case that takes longer counts as a hang
FUZZ = settings(max_examples=CASES, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def worker(tmp_path_factory, mnist_dir):
    folder = tmp_path_factory.mktemp("fuzz")
    token_file = str(folder / "token")
    security.write_new_token(token_file)
    clients = LocalClients(["fuzzed"], mnist_dir, token_file)
    with clients as (addresses, token):
        yield addresses[0], token, clients


def new_client(hook, worker):
    (name, host, port), token, _ = worker
    hook.local_worker._known_workers.pop(name, None)  # else syft gives the new client the old one's state
    return websocket_clients.make_client_class()(hook, host, port, name, token=token)


@pytest.fixture(scope="module")
def corpus(sy, hook, worker):
    """(message, reply) pairs, as bytes, of a real exchange with the worker."""
    client = new_client(hook, worker)
    pairs, real = [], client._forward_to_websocket_server_worker

    def recording(message):
        reply = real(message)
        pairs.append((message, reply))
        return reply

    client._forward_to_websocket_server_worker = recording
    rule = {"partition": "iid", "num_clients": 2, "seed": 1, "shards_per_client": None, "dirichlet_alpha": None}
    client.load_share(rule, 0)
    data = client.search(["#mnist", "#train", "#data"])[0]
    target = client.search(["#mnist", "#train", "#target"])[0]
    model = SimpleCNN().send(client)
    loss = F.cross_entropy(model(data[0:4]), target[0:4])
    loss.backward()
    loss.get()
    model.get()
    del data, target
    client.close()
    assert len(pairs) > 20
    return pairs


def huge_header(kind):
    """A msgpack header that declares 4 GB of content (str32, bin32, array32, map32)."""
    return {"str": b"\xdb", "bin": b"\xc6", "array": b"\xdd", "map": b"\xdf"}[kind] + b"\xff\xff\xff\xff"


@st.composite
def broken(draw, originals):
    """A message (bytes, or a str/bytes frame for `framing`) broken in one of the ways above."""
    original = originals[draw(st.integers(0, len(originals) - 1))]  # an index: sampled_from would hash megabytes
    kind = draw(st.sampled_from(["truncate", "flip", "replace", "insert", "random", "huge", "nest", "text", "frame"]))
    data = bytearray(original)
    if kind == "truncate":
        data = data[:draw(st.integers(0, max(0, len(data) - 1)))]
    elif kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    elif kind == "replace":
        start = draw(st.integers(0, len(data)))
        data[start:start + draw(st.integers(1, 64))] = draw(st.binary(min_size=1, max_size=64))
    elif kind == "insert":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=64))
    elif kind == "random":
        data = bytearray(draw(st.binary(max_size=4096)))
    elif kind == "huge":
        at = draw(st.integers(1, len(data)))
        data[at:at] = huge_header(draw(st.sampled_from(["str", "bin", "array", "map"])))
        data[0:1] = b"\x28"  # uncompressed, so that the header reaches msgpack
    elif kind == "nest":
        depth = draw(st.sampled_from([70, 1000, 100000]))
        data = bytearray(b"\x28" + b"\x92\x06" * depth + b"\xc0")  # [6, [6, [6, ... nil]]]: part inside part
    elif kind == "text":
        return kind, "b'" + draw(st.text(max_size=64)) + "'"
    elif kind == "frame":
        return kind, bytes(data)  # a binary websocket frame, not syft's hex text
    return kind, str(binascii.hexlify(bytes(data)))


def test_a_worker_answers_or_refuses_every_broken_message_and_keeps_serving(sy, hook, worker, corpus):
    (name, host, port), token, clients = worker
    outcomes = collections.Counter()

    @FUZZ
    @given(broken([message for message, _ in corpus]))
    def case(kind_and_frame):
        kind, frame = kind_and_frame
        ws = websocket.create_connection("ws://{}:{}".format(host, port), timeout=CASE_SECONDS,
                                         header=[security.authorization(token)])
        started = time.time()
        try:
            (ws.send_binary if isinstance(frame, bytes) else ws.send)(frame)
            reply = ws.recv()
            if reply == "":  # websocket-client's way of saying that the server closed the connection
                raise websocket.WebSocketConnectionClosedException()
            outcomes["reply"] += 1
            assert isinstance(reply, str) and reply.startswith("b'"), reply[:100]
        except (websocket.WebSocketConnectionClosedException, ConnectionResetError, BrokenPipeError):
            outcomes["connection closed"] += 1
        except websocket.WebSocketTimeoutException:
            pytest.fail("the worker hung on a {} case".format(kind))
        finally:
            ws.close()
        assert time.time() - started < CASE_SECONDS
        outcomes[kind] += 1
        assert clients.procs[name].poll() is None, "the worker died on a {} case".format(kind)

    case()
    log = "\n".join(clients.log_tail(name, 100000))
    assert "Traceback" not in log, log[max(0, log.index("Traceback") - 600):log.index("Traceback") + 2500]
    survivor = new_client(hook, worker)
    assert survivor.search(["#nothing"]) == []
    survivor.close()
    refused, failed = log.count("refused a message from"), log.count("failed (")
    print("\nfuzz, worker: {} cases ({}); {} replies, {} connections closed: {} refused, {} commands failed".format(
        sum(outcomes[k] for k in ("reply", "connection closed")), ", ".join(
            "{} {}".format(outcomes[k], k) for k in sorted(outcomes) if k not in ("reply", "connection closed")),
        outcomes["reply"], outcomes["connection closed"], refused, failed))
    assert outcomes["reply"] + outcomes["connection closed"] >= CASES


class FakeWorker:
    """A websocket server on 127.0.0.1 that answers every message with `self.reply` (None: it hangs up)."""

    def __init__(self):
        self.reply, self.ready = None, threading.Event()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self._serve, daemon=True).start()
        self.ready.wait(10)

    def _serve(self):
        asyncio.set_event_loop(self.loop)

        async def handler(ws, path):
            async for _ in ws:
                if self.reply is None:
                    await ws.close()
                    return
                await ws.send(self.reply)

        self.server = self.loop.run_until_complete(websockets.serve(handler, "127.0.0.1", 0, max_size=None))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        self.server.close()
        self.loop.run_until_complete(self.server.wait_closed())
        self.loop.close()

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_the_coordinator_reads_or_refuses_every_broken_reply(sy, hook, corpus):
    fake = FakeWorker()
    outcomes = collections.Counter()
    state = {"client": None}
    try:
        @FUZZ
        @given(st.integers(0, len(corpus) - 1), broken([reply for _, reply in corpus]))
        def case(index, kind_and_frame):
            kind, frame = kind_and_frame
            fake.reply = frame
            if state["client"] is None:  # the first, or the last case lost the connection
                fake_reply, fake.reply = fake.reply, str(binascii.hexlify(corpus[0][1]))  # connect() asks once
                hook.local_worker._known_workers.pop("fake", None)
                state["client"] = websocket_clients.make_client_class()(hook, "127.0.0.1", fake.port, "fake")
                fake.reply = fake_reply
            client, started = state["client"], time.time()
            try:
                reply = client._forward_to_websocket_server_worker(corpus[index][0])  # BaseWorker.send_msg's
                sy.serde.deserialize(reply, worker=hook.local_worker)  # two steps, as the coordinator runs them
                outcomes["read"] += 1
            except wire.Refused:
                outcomes["refused"] += 1
            except ClientError:
                outcomes["client lost"] += 1
                state["client"] = None
            assert time.time() - started < CASE_SECONDS, "the coordinator hung on a {} case".format(kind)
            outcomes[kind] += 1

        case()
    finally:
        if state["client"] is not None:
            state["client"].close()
        fake.close()
    print("\nfuzz, coordinator: {} cases ({}); {} read, {} refused, {} client lost".format(
        sum(outcomes[k] for k in ("read", "refused", "client lost")), ", ".join(
            "{} {}".format(outcomes[k], k) for k in sorted(outcomes) if k not in ("read", "refused", "client lost")),
        outcomes["read"], outcomes["refused"], outcomes["client lost"]))
    assert outcomes["read"] + outcomes["refused"] + outcomes["client lost"] >= CASES
