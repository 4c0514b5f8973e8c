"""FedAvg's clients training at the same time, when each is its own process (--workers websocket).

The coordinator only sends commands and waits for answers, so one thread per
client is enough: the work happens in the client processes, on their own cores.
Results are those of training the clients one after the other, because
- every batch, and so every random number that orders them, is drawn here first,
  in the loader's order, before any thread starts (the clients draw their dropout
  masks from their own generators);
- each thread talks only to its own client, over its own connection, and
  Python's cyclic garbage collector waits until all are done, so that no
  pointer of one client is deleted from another client's thread mid-exchange.
If one client fails, the others stop at their next batch and its error is raised.
On Ctrl-C or SIGTERM every exchange under way is cut (a client training a whole
visit in one exchange would otherwise be waited for), and all of them stop.
"""
import gc
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait


def train_together(train_copy, visits):
    """train_copy(worker, batches) for every visit at once; returns the results in visit order."""
    jobs = [(worker, list(batches)) for worker, batches in visits]  # draws every batch, in order, here
    stop = threading.Event()

    def until_stopped(batches):
        for batch in batches:
            if stop.is_set():
                return
            yield batch

    collecting = gc.isenabled()
    gc.disable()
    try:
        with ThreadPoolExecutor(max_workers=max(1, len(jobs)), thread_name_prefix="client") as pool:
            futures = [pool.submit(train_copy, worker, until_stopped(batches)) for worker, batches in jobs]
            try:
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            except BaseException:  # Ctrl-C, SIGTERM: no thread may still talk to its client while the run closes
                stop.set()  # the connections: each stops at its next batch, or at once, its exchange cut
                for worker, _ in jobs:
                    worker.abort()
                wait(futures)
                raise
            if any(f.exception() is not None for f in done):
                stop.set()
                wait(futures)
            return [f.result() for f in futures]  # raises the first client's error, in visit order
    finally:
        if collecting:
            gc.enable()
