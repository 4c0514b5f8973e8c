"""The coordinator's side of clients in their own processes (`--workers websocket`).

Each client is reached through syft's own WebsocketClientWorker, with four changes
that keep syft's wire format (a stock WebsocketServerWorker still understands it):
- the token travels in the handshake, and TLS certificates are verified against
  --ca (syft's client switches checking off);
- UTF-8 validation of replies is skipped: the replies are hex text, and
  websocket-client's pure-Python validator made `model.get()` take seconds;
- a lost connection ends the run with one line naming the client and its
  address (syft's client reconnects without TLS and may replay a command);
- a client that is not up yet is retried for a few seconds.
"""
import binascii
import contextlib
import functools
import os
import signal
import ssl
import sys
import time

import websocket

from fl_tutorial.core import partition
from fl_tutorial.privacy.fixed_point import from_wire
from fl_tutorial.privacy.peer_sum import model_size
from fl_tutorial.pysyft import client_training, env, wire
from fl_tutorial.pysyft.owners import ClientError, Owners
from fl_tutorial.remote import local_clients, security

CONNECT_RETRY_SECONDS = 10
REPLY_TIMEOUT = 30  # seconds without an answer before a client counts as gone
SECONDS_PER_SAMPLE = 0.02  # ... and, for a training request (fit), this much more per planned sample (~4x what a
# slow 2-core CPU takes)
SECONDS_PER_SHARE = 30  # ... and, for --aggregation secure|trusted, this much more per share sent or summed
SHARE_QUERY = list(client_training.SHARE_TAGS)  # what load_share tags the share with (remote/worker.py)
NONE_REPLY = b"\x28\xc0"  # syft's serialisation of None (uncompressed msgpack nil)


@functools.lru_cache(maxsize=None)
def make_client_class():
    """One class per process: syft refuses a second worker of the same id but another class.

    Made on first use, not at import: syft is imported only after env.import_syft() has checked the stack.
    """
    from syft.workers.websocket_client import WebsocketClientWorker

    class Client(WebsocketClientWorker):
        """syft's WebsocketClientWorker, connecting safely and failing cleanly."""

        def __init__(self, hook, host, port, id, token=None, sslopt=None):
            self.token, self.sslopt, self.given_up = token, sslopt, False
            super().__init__(hook, host=host, port=port, secure=sslopt is not None, id=id)

        @property
        def address(self):
            return "{}:{}".format(self.host, self.port)

        def error(self, text):
            return ClientError("{} at {} {}".format(self.id, self.address, text))

        def connect(self):
            """Called by syft's constructor; retries a client that is not listening yet."""
            deadline = time.time() + CONNECT_RETRY_SECONDS
            while True:
                try:
                    self.ws = websocket.create_connection(
                        self.url, timeout=REPLY_TIMEOUT, skip_utf8_validation=True,
                        header=[security.authorization(self.token)] if self.token else [],
                        sslopt=self.sslopt or {})
                    self.given_up = False
                    break
                except (ConnectionRefusedError, ConnectionResetError) as error:
                    if time.time() > deadline:
                        raise self.error("cannot be reached: {} (tried for {} s). Is `python -m fl_tutorial.worker "
                                         "--id {}` running there, on port {}?".format(
                                             error.strerror or error, CONNECT_RETRY_SECONDS, self.id,
                                             self.port)) from None
                    time.sleep(0.25)
                except websocket.WebSocketBadStatusException as error:
                    if error.status_code == 401:
                        raise self.error("refused the connection: wrong or missing token "
                                         "(give --token-file the file the client was started with)") from None
                    raise self.error("refused the websocket handshake: {}".format(error)) from None
                except ssl.SSLCertVerificationError as error:
                    raise self.error("sent a certificate that --ca {} does not verify: {}".format(
                        self.sslopt["ca_certs"], error.verify_message or error)) from None
                except ssl.SSLError as error:
                    raise self.error("failed the TLS handshake ({}): is it started with --cert/--key, "
                                     "and does this side give --ca?".format(error.reason or error)) from None
                except (websocket.WebSocketException, OSError) as error:
                    raise self.error("cannot be reached: {}{}".format(
                        error, "" if self.sslopt else " (if it serves wss://, give --ca)")) from None
            self._log_msgs_remote(self.log_msgs)

        def _recv_msg(self, message):
            return self._forward_to_websocket_server_worker(message)

        def _forward_to_websocket_server_worker(self, message):
            """syft's exchange (hex text each way), with every way of losing the client named.

            Once this side has given up on the connection (the client failed, Ctrl-C,
            the run is over), pointers that Python deletes late have nothing to free
            there: their messages get syft's None, quietly, instead of a printed traceback.
            """
            if self.given_up:
                return NONE_REPLY
            try:
                self.ws.send(str(binascii.hexlify(message)))
                reply = self.ws.recv()
            except (KeyboardInterrupt, SystemExit):  # in mid-exchange: half a reply may be left unread
                self.close()
                raise
            except websocket.WebSocketTimeoutException:
                raise self.lost("gave no answer for {:.0f} s; the run stops here".format(
                    self.ws.gettimeout())) from None
            except (websocket.WebSocketException, OSError, UnicodeDecodeError) as error:  # gone, or garbled
                raise self.lost("stopped answering ({}); the run stops here".format(
                    type(error).__name__ if not str(error) else error)) from None
            if not isinstance(reply, str) or not reply.startswith("b'"):
                raise self.lost("closed the connection, or sent something that is not syft's hex text; "
                                "the run stops here")
            try:
                reply = binascii.unhexlify(reply[2:-1])
            except (binascii.Error, ValueError) as error:
                raise self.lost("sent a reply that is not hex text ({}); the run stops here".format(error)) from None
            wire.receiving_from("{} at {}".format(self.id, self.address))  # named if the reply is refused
            return reply

        def lost(self, text):
            """The error for a client this side gives up on."""
            self.close()
            return self.error(text)

        def load_share(self, rule, index):
            """Ask the client to keep its share of its own MNIST; returns its label histogram."""
            return self._send_msg_and_deserialize("load_share", rule=rule, index=index)

        def fit(self, dataset_key, **kwargs):
            """syft's fit entry point, in one exchange: the client trains on its share (pysyft/client_training.py)."""
            samples = sum(len(batch) for one_pass in kwargs.get("passes", []) for batch in one_pass)
            # a whole share trains in one exchange: its reply may take a while
            reply = self._within(SECONDS_PER_SAMPLE * samples, "fit", dataset_key=dataset_key, **kwargs)
            if isinstance(reply, dict) and "error" in reply:
                raise self.error("did not train: {}; the run stops here".format(reply["error"]))
            return reply

        def share_update(self, round_id, weight, holders, noise_std):
            """--aggregation secure|trusted: hand the kept update's shares to the holders (peer_aggregation.py)."""
            return self._longer(SECONDS_PER_SHARE * len(holders), "share_update", round_id=round_id, weight=weight,
                                holders=holders, noise_std=noise_std)

        def receive_share(self, round_id, sender, share):
            """Another client's call: take one share of `sender`'s update."""
            return self._longer(SECONDS_PER_SHARE, "receive_share", round_id=round_id, sender=sender, share=share)

        def sum_shares(self, round_id, senders):
            """The holder's sum of the round's shares: {"sum": int64 tensor} or {"error": ...}."""
            reply = self._longer(SECONDS_PER_SHARE, "sum_shares", round_id=round_id, senders=senders)
            if "error" not in reply and from_wire(reply.get("sum"), model_size()) is None:
                raise self.error("sent a sum that is not one of SimpleCNN's size; nothing was decoded, the run "
                                 "stops here")
            return reply

        def _within(self, seconds, command, **kwargs):
            """A worker command whose reply may take `seconds` longer than REPLY_TIMEOUT."""
            self.ws.settimeout(REPLY_TIMEOUT + seconds)
            try:
                return self._send_msg_and_deserialize(command, **kwargs)
            finally:
                if self.ws is not None:
                    self.ws.settimeout(REPLY_TIMEOUT)

        def _longer(self, seconds, command, **kwargs):
            """_within(), for the aggregation's commands: a reply that is not a dict is an error."""
            reply = self._within(seconds, command, **kwargs)
            return reply if isinstance(reply, dict) else {"error": "a reply that is not a dict"}

        def abort(self):
            """From another thread: the exchange under way fails now (Ctrl-C while the client trains)."""
            ws = self.ws
            if ws is not None:
                ws.abort()

        def close(self):
            self.given_up = True
            if self.ws is not None:
                try:
                    self.ws.close(timeout=1)
                except Exception:
                    pass
                self.ws = None

    return Client


AGGREGATOR = "aggregator"


@contextlib.contextmanager
def clients(hook, names, data_dir, connect=None, token_file=None, ca=None, aggregator=None, trusted=False,
            train_only=False, threads=None):
    """Step 1 with --workers websocket: the clients, connected; closed and stopped when the run ends.

    With `connect` ([(id, host, port)], --connect), the clients run already, on this or
    other machines, with the token in `token_file`, serving TLS verified against `ca`.
    Otherwise this run starts one process per name on 127.0.0.1 (train-only data owners
    if `train_only`, each with `threads` torch threads) and stops them at the end. With
    `trusted`, --aggregation trusted's aggregator too: started here, or at `aggregator` (host, port).
    """
    with contextlib.ExitStack() as stack:
        if connect:
            addresses = connect + ([(AGGREGATOR,) + tuple(aggregator)] if trusted else [])
            token = security.read_token(token_file) if token_file else None
            sslopt = security.client_sslopt(ca) if ca else None
        else:
            ids = list(names) + ([AGGREGATOR] if trusted else [])
            owners = ["--train-only"] if train_only else []  # train-only: they need nothing more
            try:
                addresses, token = stack.enter_context(local_clients.LocalClients(
                    ids, data_dir, token_file, ["--threads", str(threads)] + owners,
                    args_for={AGGREGATOR: ["--aggregator"]}))
            except local_clients.StartError as error:  # one line, like every other client failure
                raise ClientError(str(error)) from None
            sslopt = None
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        stack.callback(signal.signal, signal.SIGTERM, previous)
        workers = Owners()
        stack.callback(_disconnect, workers)
        Client = make_client_class()
        for worker_id, host, port in addresses:
            worker = Client(hook, host, port, worker_id, token=token, sslopt=sslopt)
            if trusted and worker_id == AGGREGATOR:
                workers.aggregator = worker
            else:
                workers.append(worker)
        yield workers


def threads_per_client(at_once):
    """Torch threads for each client process this run starts, when `at_once` of them train at the same time:

    they share this machine's cores (FedAvg's clients train at once; sequential ones, or --in-turn, one by one).
    """
    return max(1, (os.cpu_count() or 1) // max(1, at_once))


def _exit_on_sigterm(signum, frame):
    sys.exit("Terminated.")


def _disconnect(workers):
    """Forget the clients' objects (pointers can no longer reach them), ask each to free them, close."""
    env.disarm_pointers()
    for worker in list(workers) + ([workers.aggregator] if workers.aggregator else []):
        try:
            if worker.ws is not None:
                worker.clear_objects_remote()
        except ClientError:
            pass
        worker.close()


def own_shares(sy, workers, rule, pointers=True):
    """Step 2 with the data at its owners: each client gets the rule, keeps its share; syft finds it by tags.

    Returns the federated dataset and, per client, its sample count and label histogram.
    With pointers=False (--train-on client) the coordinator holds no pointer to the
    data: the dataset stands in for the shares, with their sizes.
    """
    client_training.draw_as_federate(rule)  # every random number after this is the virtual run's
    datasets, described = [], []
    for index, worker in enumerate(workers):
        reply = worker.load_share(rule, index)
        if "error" in reply:
            if reply.get("kind") == "partition":
                raise partition.PartitionError(reply["error"])
            raise worker.error("could not load its data: {}".format(reply["error"]))
        described.append(dict(client=worker.id, samples=reply["samples"], labels=reply["labels"]))
        if not pointers:
            datasets.append(client_training.Share(worker, reply["samples"]))
            continue
        if reply.get("train_only"):
            raise worker.error("is a train-only data owner (python -m fl_tutorial.worker --train-only): it trains on "
                               "its own share and takes no pointer commands. Use --train-on client; the run stops here")
        data = worker.search(SHARE_QUERY + ["#data"])
        targets = worker.search(SHARE_QUERY + ["#target"])
        if len(data) != 1 or len(targets) != 1:
            raise worker.error("holds {} data and {} target tensors tagged {}; expected one each".format(
                len(data), len(targets), " ".join(SHARE_QUERY)))
        datasets.append(sy.BaseDataset(data[0], targets[0]))
    return sy.FederatedDataset(datasets), described
