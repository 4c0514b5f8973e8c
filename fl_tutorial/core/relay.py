"""A TCP relay on 127.0.0.1 that counts the bytes it carries: what a run really sends over the network.

`make compare` puts one between the coordinator and each websocket client, and
between the SuperNodes and the SuperLink, so both systems are measured the same
way: every byte on the wire, both directions, framing and TLS included.
"""
import socket
import threading


class Relay:
    """Listens on 127.0.0.1 (a free port: .port) and forwards each connection to (host, port)."""

    def __init__(self, host, port):
        self.target = (host, port)
        self.sent = self.received = 0  # towards the target / back from it
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def total(self):
        return self.sent + self.received

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:  # closed
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self.sockets += [client, upstream]
            for source, sink, direction in ((client, upstream, "sent"), (upstream, client, "received")):
                threading.Thread(target=self._pipe, args=(source, sink, direction), daemon=True).start()

    def _pipe(self, source, sink, direction):
        try:
            while True:
                data = source.recv(1 << 16)
                if not data:
                    break
                sink.sendall(data)
                with self.lock:
                    setattr(self, direction, getattr(self, direction) + len(data))
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.server.close()
        for s in self.sockets:
            s.close()
