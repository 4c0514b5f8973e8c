"""A client in its own process: a data owner serving syft's WebsocketServerWorker, safe by default.

    python -m fl_tutorial.worker --id client1 --port 8777 --data-dir ./data
    python -m fl_tutorial.worker --id client1 --host 0.0.0.0 --port 8777 --data-dir ./data \\
        --token-file token.txt [--cert cert.pem --key key.pem]

The worker reads MNIST from its own --data-dir and keeps only its share of the
training set; the coordinator (`federated_learning.py --workers websocket`)
sends the rule of the split, never samples, and finds the share by its tags.
It binds 127.0.0.1 unless told otherwise, and refuses to listen on any other
address without a token (see fl_tutorial/security.py for why).
"""
import argparse
import asyncio
import http
import ipaddress
import signal
import sys

import websockets

from fl_tutorial import security
from fl_tutorial.env import import_syft

SHARE_TAGS = ("#mnist", "#train")


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
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads (default: torch's own choice)")
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
            "--host {}: listening beyond this machine needs --token-file. syft 0.2.6 unpickles what it "
            "receives, so anyone who reaches this port could run code here as you. Make a token with\n"
            "    {}\nand give the same file to the coordinator (--token-file).".format(
                args.host, security.MAKE_TOKEN))
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    try:
        token = security.read_token(args.token_file) if args.token_file else None
        context = security.server_context(args.cert, args.key) if args.cert else None
    except security.SecurityError as error:
        parser.error(str(error))
    return token, context


def make_owner_class(sy):
    """syft's own WebsocketServerWorker, plus the data owner's one command and a safer handler."""
    import torch
    from syft.workers.websocket_server import WebsocketServerWorker

    from fl_tutorial import mnist, partition

    class DataOwner(WebsocketServerWorker):
        def __init__(self, hook, host, port, id, data_dir, token, ssl_context):
            super().__init__(hook, host=host, port=port, id=id)
            self.data_dir, self.token, self.ssl_context = data_dir, token, ssl_context

        def load_share(self, rule, index):
            """Worker command: keep this client's share of MNIST's training set, as `rule` splits it.

            Returns the share's sample count and label histogram, or {"error": ...}.
            Only the rule arrives here; the samples never leave this process.
            """
            try:
                self.clear_objects()  # one coordinator at a time: what an earlier run left goes
                images, labels = mnist.normalized(self.data_dir)
                share = torch.from_numpy(partition.split(labels.numpy(), rule)[index])
                data = images.index_select(0, share).tag(*SHARE_TAGS, "#data")
                targets = labels.index_select(0, share).tag(*SHARE_TAGS, "#target")
                self.load_data([data, targets])
                torch.manual_seed(rule["seed"] + index)  # dropout on this client: reproducible
                log(self.id, "holds {} training samples (share {} of {})".format(len(share), index + 1,
                                                                                 rule["num_clients"]))
                return partition.histogram(targets.numpy())
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
                while True:
                    message = await queue.get()
                    try:
                        reply = self._hex_reply(message)
                    except Exception as error:  # a failing command: say so here, then drop the connection
                        log(self.id, "a command failed ({}: {}); closing the connection".format(
                            type(error).__name__, error))
                        return
                    await websocket.send(reply)

            tasks = [asyncio.ensure_future(consume()), asyncio.ensure_future(produce())]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()

        def _hex_reply(self, message):
            """syft 0.2.6's wire format: a message is str(hexlify(bytes)), that is "b'...'"."""
            import binascii

            return str(binascii.hexlify(self._recv_msg(binascii.unhexlify(message[2:-1]))))

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
                max_size=None, ping_timeout=None, close_timeout=1))
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
    import torch

    from fl_tutorial import mnist

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        mnist.ensure(args.data_dir)  # fail now, on this machine, rather than at the coordinator's first call
    except mnist.DataError as error:
        sys.exit("error: {}".format(error))
    hook = sy.TorchHook(torch)
    owner = make_owner_class(sy)(hook, args.host, args.port, args.id, args.data_dir, token, context)
    try:
        owner.serve(lambda url: print("{} ready on {} ({}, {})".format(
            args.id, url, "token required" if token else "no token", "TLS" if context else "no TLS"), flush=True))
    except OSError as error:  # the port is taken, or the address is not this machine's
        parser.error("cannot listen on {}:{}: {}".format(args.host, args.port, error.strerror or error))
    log(args.id, "stopped")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
