"""Clients in their own processes (--workers websocket): the data owner's worker, the coordinator's side, the wire.

worker.py: `python -m fl_tutorial.worker`, syft's WebsocketServerWorker hardened; websocket_clients.py:
the coordinator's clients; local_clients.py: the processes a run starts on 127.0.0.1; security.py:
tokens and TLS; together.py: FedAvg's clients training at the same time.
"""
