"""The network guard of both test suites: a test that connects beyond 127.0.0.1 fails."""
import socket

import pytest


@pytest.fixture(autouse=True)
def no_internet(monkeypatch):
    """Any connection from the test process to a non-loopback address fails the test."""
    real_connect = socket.socket.connect

    def connect(self, address):
        host = address[0] if self.family in (socket.AF_INET, socket.AF_INET6) else "localhost"
        if not (host.startswith("127.") or host in ("localhost", "::1")):
            raise AssertionError("test tried to reach the network: {!r}".format(address))
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
