"""FedAvg's average across processes and hosts (`--workers websocket --aggregation secure|trusted`).

Each client trains on its own share (`--train-on client`) and keeps its update
(its weights minus the round's start). Then, one client at a time, the
coordinator asks each to hand its update to the round's *holders*:

- secure: the holders are the round's clients themselves. A client scales its
  update by its weight, encodes it in fixed point in the ring Z_(2^64), splits it
  into one additive share per holder (all but one drawn uniformly at random from
  the operating system) and sends each share straight to its holder, over a
  websocket with the run's token (and, with TLS, the holder's certificate checked
  against the client's --ca). One share alone is uniformly random: it says nothing.
- trusted: the one holder is `aggregator`, its own process
  (`python -m fl_tutorial.worker --id aggregator --aggregator`), which gets every
  scaled update whole: it must be trusted, as in the course's Part 04.

Each holder adds what it received; the coordinator adds the holders' sums and
decodes only that total, the weighted average update. Nothing is decoded unless
every holder answers for every client of the round. With DP (dp.py)
each client clips its update and adds its part of the noise before encoding.

A coordinator that asks for more than the protocol gives is refused: a holder
sums only the shares of MIN_SENDERS or more clients, all it received that round,
and only once; a client keeps no share of its own update as the round's only
holder, and sends no two shares to one holder. (A coordinator that lies about
where the clients are could still collect every share: with TLS, each client
checks the certificate of every holder against its own --ca.)

Fixed point: fixed_point.py's. How a holder reaches another is the worker's business
(fl_tutorial/remote/worker.py gives `connect_peer`): this module only says what is sent, to whom,
and what a holder refuses.
"""
import functools

import numpy as np
import torch

from fl_tutorial.core.model import SimpleCNN
from fl_tutorial.privacy import dp
from fl_tutorial.privacy.aggregation import Aggregation, AggregationError
from fl_tutorial.privacy.fixed_point import add, decode, encode, from_wire, split, to_wire

MIN_SENDERS = 2  # a sum of one client's shares is that client's update


@functools.lru_cache(maxsize=None)
def model_size():
    """SimpleCNN's parameter count, a share's length (built off the training's random numbers)."""
    with torch.random.fork_rng(devices=[]):
        return sum(p.numel() for p in SimpleCNN().parameters())


# --- the holder's and the client's side (fl_tutorial/remote/worker.py's DataOwner) ------------------------------

class Holder:
    """A worker's part: keep its own update after `fit`, share it, take shares, add them up.

    Mixed into the DataOwner (fl_tutorial/remote/worker.py), which gives `connect_peer(holder_id,
    host, port, tls)`: a client of another holder, on which receive_share can be called. Its
    methods are worker commands (fl_tutorial/pysyft/wire.py lists them).
    """

    def forget_rounds(self):
        self.kept, self.received, self.peers = {}, {}, getattr(self, "peers", {})

    def keep_update(self, round_id, weights, start):
        """After fit with settings["keep"]: this client's update stays here, as a flat float64 vector."""
        names = list(start)
        self.kept = {round_id: (dp.flatten(weights, names) - dp.flatten(start, names))}

    def share_update(self, round_id, weight, holders, noise_std):
        """Worker command: scale, noise, encode and split the kept update; send each share to its holder.

        holders: [[id, host, port, tls]]. Returns {"shared": n} or {"error": ..., "holder": id}.
        """
        if not (isinstance(weight, float) and 0 < weight <= 1 and isinstance(noise_std, float) and noise_std >= 0):
            return {"error": "the weight or the noise is not a number in range"}
        if not isinstance(holders, (list, tuple)) or not holders or not all(
                isinstance(h, (list, tuple)) and len(h) == 4 for h in holders):
            return {"error": "the holders are not a list of [id, host, port, tls]"}
        names = [h[0] for h in holders]
        if len(set(names)) != len(names):
            return {"error": "refused: a holder named twice (it would hold more of the update than a share)"}
        if names == [self.id]:
            return {"error": "refused: this client as its own only holder (its sum would be the update)"}
        update = self.kept.pop(round_id, None)
        if update is None:
            return {"error": "no update is kept here for this round"}
        ring = encode((update + dp.noise(update.shape, noise_std)) * weight)
        for (holder_id, host, port, tls), share in zip(holders, split(ring, len(holders))):
            if holder_id == self.id:
                self._take(round_id, self.id, share)
                continue
            reply = self._send_share(round_id, (holder_id, host, port, tls), share)
            if "error" in reply:
                return dict(reply, holder=holder_id)
        return {"shared": len(holders)}

    def receive_share(self, round_id, sender, share):
        """Worker command: a share of `sender`'s update for this round; kept until sum_shares."""
        ring = from_wire(share, model_size())
        if ring is None or not isinstance(sender, str) or not isinstance(round_id, str):
            return {"error": "not a share of SimpleCNN's update"}
        return self._take(round_id, sender, ring)

    def _take(self, round_id, sender, ring):
        got = self.received.setdefault(round_id, {})
        if sender in got:
            return {"error": "a second share from {}".format(sender)}
        if len(self.received) > 2:  # an old round that never ended
            self.received = {round_id: got}
        got[sender] = ring
        return {"ok": True}

    def _send_share(self, round_id, holder, share):
        """One share to one holder; a cached connection that has gone stale is opened once more."""
        for attempt in (1, 2):
            cached = holder[0] in self.peers
            try:
                reply = self.connect_peer(*holder).receive_share(round_id, self.id, to_wire(share))
                return reply if isinstance(reply, dict) else {"error": "a reply that is not a dict"}
            except Exception as error:  # gone, refused, or not verified: the coordinator names the holder
                self.peers.pop(holder[0], None)
                if not cached or attempt == 2:
                    return {"error": str(error)}

    def sum_shares(self, round_id, senders):
        """Worker command: the sum of this round's shares, one from each of `senders`, or {"error": ...}.

        Only for MIN_SENDERS or more senders, all that sent a share here, and once a round.
        """
        got = self.received.pop(round_id, {})
        if not isinstance(senders, (list, tuple)) or len(set(senders)) < MIN_SENDERS:
            return {"error": "refused: a sum of fewer than {} clients' shares".format(MIN_SENDERS)}
        missing = [s for s in senders if s not in got]
        if missing or set(got) - set(senders):
            return {"error": "no share from {}".format(", ".join(missing)) if missing else
                    "shares from clients outside the round"}
        return {"sum": to_wire(add([got[s] for s in senders]))}


# --- the coordinator's side -----------------------------------------------------------------------------

class PeerSum(Aggregation):
    """The coordinator's part: only sums of shares reach it; it decodes their total, the average update.

    aggregator: the `aggregator` process's client (trusted), or None (secure: the round's clients hold).
    noise_multiplier, clip: DP-FedAvg's Z and C (dp.py), or None.
    """

    def __init__(self, aggregator=None, noise_multiplier=None, clip=None):
        self.aggregator, self.noise_multiplier, self.clip = aggregator, noise_multiplier, clip
        self.round = 0

    def next_round(self):
        """The key the clients keep this round's update under (fit's settings["keep"])."""
        self.round += 1
        return "round-{}".format(self.round)

    def _average(self, updates, start):
        """updates: [(samples, client that kept its update)] -> the new state_dict."""
        clients = [worker for _, worker in updates]
        if len(clients) < MIN_SENDERS:
            raise AggregationError("--aggregation {}: only {} trained in this round (--max-batches ended it early), "
                                   "and a sum of one update is that update. Allow more batches, or use "
                                   "--aggregation server".format("secure" if self.aggregator is None else "trusted",
                                                                 clients[0].id))
        holders = [self.aggregator] if self.aggregator is not None else clients
        addresses = [[h.id, h.host, h.port, bool(h.secure)] for h in holders]
        total = sum(n for n, _ in updates)
        weights = ([1.0 / len(updates)] * len(updates) if self.clip is not None  # DP: every client weighs 1/m
                   else [n / total for n, _ in updates])
        std = dp.client_std(self.noise_multiplier, self.clip, len(updates)) if self.noise_multiplier else 0.0
        round_id = "round-{}".format(self.round)
        for worker, weight in zip(clients, weights):
            reply = worker.share_update(round_id, weight, addresses, std)
            if "error" in reply:
                raise AggregationError(
                    "{} could not hand its share to {} ({}); nothing was decoded, the run stops here".format(
                        worker.id, reply.get("holder", "its holders"), reply["error"]))
        sums = []
        for holder in holders:
            reply = holder.sum_shares(round_id, [w.id for w in clients])
            if "error" in reply:
                raise AggregationError("{} cannot sum this round's shares ({}); nothing was decoded, the run "
                                       "stops here".format(holder.id, reply["error"]))
            sums.append(reply["sum"].numpy().view(np.uint64))
        names = list(start)
        average_update = decode(add(sums))
        return dp.unflatten(dp.flatten(start, names) + average_update, start)
