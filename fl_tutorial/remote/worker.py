"""A client in its own process: a data owner serving syft's WebsocketServerWorker, safe by default.

    python -m fl_tutorial.worker --id client1 --port 8777 --data-dir ./data
    python -m fl_tutorial.worker --id client1 --host 0.0.0.0 --port 8777 --data-dir ./data \\
        --token-file token.txt [--cert cert.pem --key key.pem]

The worker reads MNIST from its own --data-dir and keeps only its share of the
training set; the coordinator (`federated_learning.py --workers websocket`)
sends the rule of the split, never samples, and finds the share by its tags.
It binds 127.0.0.1 unless told otherwise, and refuses to listen on any other
address without a token (see security.py for why). It runs only
what training needs, and unpickles no code (fl_tutorial/pysyft/wire.py).
"""
import argparse
import asyncio
import binascii
import http
import ipaddress
import signal
import sys

import torch
import websockets

from fl_tutorial.core import mnist, partition
from fl_tutorial.privacy.peer_sum import Holder
from fl_tutorial.pysyft import client_training, wire
from fl_tutorial.pysyft.client_training import SHARE_TAGS
from fl_tutorial.pysyft.env import import_syft
from fl_tutorial.remote import security, websocket_clients


def log(worker_id, text):
    print("[{}] {}".format(worker_id, text), file=sys.stderr, flush=True)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m fl_tutorial.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--id", required=True, help="the client's name, as the coordinator's --connect gives it")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1; any other needs --token-file)")
    parser.add_argument("--port", type=int, default=8777, help="port to listen on; 0 picks a free one (default: 8777)")
    parser.add_argument("--data-dir", default="./data", metavar="DIR",
                        help="this client's MNIST (MNIST/raw/*.gz); downloaded if missing (default: ./data)")
    parser.add_argument("--token-file", metavar="FILE", help="accept only connections that present this token")
    parser.add_argument("--cert", metavar="FILE", help="serve wss:// with this certificate (PEM) ...")
    parser.add_argument("--key", metavar="FILE", help="... and this private key (PEM)")
    parser.add_argument("--ca", metavar="FILE",
                        help="--aggregation secure over TLS: verify the other clients' certificates against this CA "
                             "when sending them shares")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads (default: torch's own choice)")
    parser.add_argument("--aggregator", action="store_true",
                        help="hold no data: only sum the updates the clients send (--aggregation trusted's "
                             "aggregator, e.g. --id aggregator)")
    parser.add_argument("--train-only", action="store_true",
                        help="answer only what --train-on client needs (the share's rule, training requests, "
                             "cleanup): no pointer commands, no object requests, no losses; the coordinator gets "
                             "the trained weights and the counts, never a sample or a label")
    return parser


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_args(parser, args):
    if not 0 <= args.port <= 65535:
        parser.error("--port {}: must be 0 to 65535".format(args.port))
    if not is_loopback(args.host) and not args.token_file:
        parser.error(
            "--host {}: listening beyond this machine needs --token-file: whoever reaches this port could "
            "read this client's data and make it compute (that is how syft trains). Make a token with\n"
            "    {}\nand give the same file to the coordinator (--token-file).".format(
                args.host, security.MAKE_TOKEN))
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    if args.aggregator and args.train_only:
        parser.error("--aggregator holds no data and takes no training: leave out --train-only")
    try:
        token = security.read_token(args.token_file) if args.token_file else None
        context = security.server_context(args.cert, args.key) if args.cert else None
        args.ca and security.client_sslopt(args.ca)
    except security.SecurityError as error:
        parser.error(str(error))
    return token, context


def _allow(kind, name, allowed, what):
    """Refuse `name` unless it is in `allowed` (wire.record()s it, to measure the list)."""
    wire.record(kind, name)
    if name not in allowed and not wire.recording():
        wire.refuse("{}: {}".format(what, str(name)[:200]))


def make_owner_class(sy):
    """syft's own WebsocketServerWorker, plus the data owner's commands and a safer handler.

    Made once syft is imported (sy, from import_syft(): the stack is checked first).
    """
    from syft.workers.websocket_server import WebsocketServerWorker

    class DataOwner(Holder, WebsocketServerWorker):
        def __init__(self, hook, host, port, id, data_dir, token, ssl_context, train_only=False, ca=None,
                     aggregator=False):
            super().__init__(hook, host=host, port=port, id=id)
            self.data_dir, self.token, self.ssl_context, self.train_only = data_dir, token, ssl_context, train_only
            self.ca, self.aggregator = ca, aggregator
            self.forget_rounds()
            self.accepts_foreign_pointers = False  # it knows no other worker (fl_tutorial/pysyft/wire.py)
            self._message_router = {kind: self._only_known(kind, handler)
                                    for kind, handler in self._message_router.items()}

        def _only_known(self, kind, handler):
            """A kind of message that training never sends (a Plan, say) is refused, not handled."""
            allowed, what = ((wire.TRAIN_ONLY_MESSAGES, "a kind of message {} does not take".format(
                                 "an aggregator" if self.aggregator else "a train-only data owner"))
                             if self.train_only or self.aggregator else
                             (wire.MESSAGES, "a kind of message this worker does not take"))

            def checked(message):
                _allow("message", kind.__name__, allowed, what)
                return handler(message)
            return checked

        def execute_worker_command(self, message):
            allowed, what = ((wire.AGGREGATOR_COMMANDS, "a worker command an aggregator does not run")
                             if self.aggregator else
                             (wire.TRAIN_ONLY_COMMANDS, "a worker command a train-only data owner does not run")
                             if self.train_only else (wire.COMMANDS, "a worker command this worker does not run"))
            _allow("command", message.command_name, allowed, what)
            return super().execute_worker_command(message)

        def fit(self, dataset_key, weights, passes, settings):
            """Worker command, syft's `fit`: train SimpleCNN on this client's own share, as planned.

            Returns the weights, the sample count and (unless --train-only) each batch's
            loss, or {"error": ...} for a request this data owner does not train on.
            """
            reply = client_training.fit_share(self, dataset_key, weights, passes, settings, self.train_only)
            if "error" in reply:
                log(self.id, "did not train: {}".format(reply["error"]))
            elif isinstance(settings, dict) and isinstance(settings.get("keep"), str):  # secure or trusted: it stays
                self.keep_update(settings["keep"], reply.pop("weights"), weights)
                reply["weights"] = None
            return reply

        def connect_peer(self, holder_id, host, port, tls):
            """A connection to another holder, for peer_sum's shares: the token this worker takes, its own --ca."""
            known = self.peers.get(holder_id)
            if known is not None and known.ws is not None and (known.host, known.port) == (host, port):
                return known
            if tls and not self.ca:
                raise RuntimeError("{} serves wss:// and this worker has no --ca to verify it".format(holder_id))
            Client = websocket_clients.make_client_class()
            self.peers[holder_id] = Client(self.hook, host, port, holder_id, token=self.token,
                                           sslopt=security.client_sslopt(self.ca) if tls else None)
            return self.peers[holder_id]

        def execute_computation_action(self, action):
            """syft calls any method the message names, on a stored object or on the worker itself."""
            if action.target is None:  # a function, e.g. torch.nn.functional.relu
                _allow("function", action.name, wire.FUNCTIONS, "a function this worker does not run")
            elif isinstance(action.target, str):  # "self" (the worker) or a tag
                _allow("worker-method", action.name, wire.WORKER_METHODS, "a method this worker does not run")
            else:  # an object in the worker's store: a tensor, a pointer
                _allow("method", action.name, wire.METHODS, "a method this worker does not run on its objects")
            return super().execute_computation_action(action)

        def load_share(self, rule, index):
            """Worker command: keep this client's share of MNIST's training set, as `rule` splits it.

            Returns the share's sample count and label histogram, or {"error": ...}.
            Only the rule arrives here; the samples never leave this process.
            """
            try:
                self.clear_objects()  # one coordinator at a time: what an earlier run left goes
                self.forget_rounds()
                images, labels = mnist.normalized(self.data_dir)
                share = torch.from_numpy(partition.split(labels.numpy(), rule)[index])
                if self.train_only and len(share) < client_training.MIN_BATCH_TRAIN_ONLY:  # its labels would show
                    return {"error": "a train-only data owner keeps no share of fewer than {} samples; this rule "
                                     "gives it {}".format(client_training.MIN_BATCH_TRAIN_ONLY, len(share)),
                            "kind": "data"}
                data = images.index_select(0, share).tag(*SHARE_TAGS, "#data")
                targets = labels.index_select(0, share).tag(*SHARE_TAGS, "#target")
                self.load_data([data, targets])
                torch.manual_seed(rule["seed"] + index)  # dropout on this client: reproducible
                log(self.id, "holds {} training samples (share {} of {})".format(len(share), index + 1,
                                                                                 rule["num_clients"]))
                return dict(partition.histogram(targets.numpy()), train_only=self.train_only)
            except partition.PartitionError as error:
                return {"error": str(error), "kind": "partition"}
            except (mnist.DataError, ValueError, IndexError) as error:
                return {"error": str(error), "kind": "data"}

        async def _handler(self, websocket, *unused_args):
            """syft's consumer/producer pair, with a queue per connection (syft shares one)."""
            queue = asyncio.Queue()

            async def consume():
                try:
                    while True:
                        await queue.put(await websocket.recv())
                except websockets.exceptions.ConnectionClosed:
                    pass

            async def produce():
                peer = "{}:{}".format(*websocket.remote_address[:2]) if websocket.remote_address else "?"
                while True:
                    message = await queue.get()
                    try:
                        reply = self._hex_reply(message)
                    except wire.Refused as error:  # nothing of it ran: say so here, then drop the connection
                        log(self.id, "refused a message from {} ({}); closing the connection".format(peer, error))
                        return
                    except Exception as error:  # a failing command: likewise
                        log(self.id, "a command from {} failed ({}: {}); closing the connection".format(
                            peer, type(error).__name__, str(error)[:300]))
                        return
                    await websocket.send(reply)

            tasks = [asyncio.ensure_future(consume()), asyncio.ensure_future(produce())]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()

        def _hex_reply(self, message):
            """syft 0.2.6's wire format: a message is str(hexlify(bytes)), that is "b'...'"."""
            if not isinstance(message, str) or not message.startswith("b'"):
                wire.refuse("a message that is not syft's hex text")
            try:
                message = binascii.unhexlify(message[2:-1])
            except (binascii.Error, ValueError) as error:
                wire.refuse("a message that is not hex text ({})".format(error))
            return str(binascii.hexlify(self._recv_msg(message)))

        def serve(self, on_ready):
            """Listen (checking the token in the handshake), call on_ready(url), serve until stopped."""
            owner = self

            class Protocol(websockets.WebSocketServerProtocol):
                async def process_request(self, path, headers):
                    if owner.token is None or security.token_matches(owner.token, headers.get(security.HEADER)):
                        return None
                    log(owner.id, "refused a connection from {}: wrong or missing token".format(
                        "{}:{}".format(*self.remote_address[:2]) if self.remote_address else "?"))
                    return http.HTTPStatus.UNAUTHORIZED, [], b"wrong or missing token\n"

            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            server = loop.run_until_complete(websockets.serve(
                self._handler, self.host, self.port, ssl=self.ssl_context, create_protocol=Protocol,
                max_size=2 * wire.MAX_MESSAGE_BYTES + 3, ping_timeout=None, close_timeout=1))  # hex: 2 chars a byte
            port = server.sockets[0].getsockname()[1]
            on_ready("{}://{}:{}".format("wss" if self.ssl_context else "ws", self.host, port))
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, loop.stop)
            try:
                loop.run_forever()
            finally:
                server.close()
                loop.run_until_complete(server.wait_closed())

    return DataOwner


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    token, context = check_args(parser, args)
    sy = import_syft()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        args.aggregator or mnist.ensure(args.data_dir)  # fail now, on this machine, not at the coordinator's call
    except mnist.DataError as error:
        sys.exit("error: {}".format(error))
    hook = sy.TorchHook(torch)
    owner = make_owner_class(sy)(hook, args.host, args.port, args.id, args.data_dir, token, context, args.train_only,
                                 args.ca, args.aggregator)
    try:
        owner.serve(lambda url: print("{} ready on {} ({}, {}{})".format(
            args.id, url, "token required" if token else "no token", "TLS" if context else "no TLS",
            ", aggregator" if args.aggregator else ", train-only" if args.train_only else ""), flush=True))
    except OSError as error:  # the port is taken, or the address is not this machine's
        parser.error("cannot listen on {}:{}: {}".format(args.host, args.port, error.strerror or error))
    log(args.id, "stopped")


def run(argv=None):
    """main() as a program: Ctrl-C in the worker's own terminal stops it, quietly."""
    try:
        main(argv)
    except KeyboardInterrupt:
        sys.exit(0)
