"""The flags the course never had, and the one frozen Settings that every flag becomes, checked once.

federated_learning.py keeps the course's flags and calls add_flags(), so that it
reads as the tutorial; `--help` shows everything, grouped. parse() checks what
cannot work together (argparse's usage error, exit status 2, one message), fills
in the defaults that depend on other flags (--num-clients, --shards-per-client,
--data-from, --train-on), and returns Settings, which nothing changes afterwards.
"""
from dataclasses import asdict, dataclass
from typing import Optional, Tuple, Union

from fl_tutorial.core import files, partition, sampling
from fl_tutorial.core.cli import (
    fraction,
    non_negative_float,
    open_fraction,
    parse_address,
    parse_connect,
    positive_float,
    positive_int,
    probability,
)
from fl_tutorial.privacy import dp
from fl_tutorial.pysyft.client_training import MIN_BATCH_TRAIN_ONLY, LocalTraining
from fl_tutorial.remote import security


def add_flags(parser):
    """The "experiments", "differentially private FedAvg" and "clients in their own processes" groups of --help."""
    experiments = parser.add_argument_group("experiments")
    experiments.add_argument("--num-clients", type=positive_int, metavar="N",
                             help="number of clients, client1 ... clientN (default: 2, or those of --connect)")
    experiments.add_argument("--partition", choices=("iid", "noniid"), default="iid",
                             help="iid: the course's .federate() (default); noniid: label shards or Dirichlet")
    experiments.add_argument("--shards-per-client", type=positive_int, metavar="K",
                             help="noniid: label-sorted shards per client (default: 2)")
    experiments.add_argument("--dirichlet-alpha", type=positive_float, metavar="A",
                             help="noniid: split each class by Dirichlet(A) instead of shards")
    experiments.add_argument("--strategy", choices=("sequential", "fedavg"), default="sequential",
                             help="sequential: the course's model passing (default); fedavg: Federated Averaging")
    experiments.add_argument("--local-epochs", type=positive_int, default=1, metavar="E",
                             help="fedavg: passes over its own data per client and round (default: 1)")
    experiments.add_argument("--clients-per-round", type=positive_int, metavar="M",
                             help="fedavg: train M clients a round, drawn at random (seeded by --seed), the FedAvg "
                                  "paper's C*K (default: every client)")
    experiments.add_argument("--prox-mu", type=non_negative_float, default=0.0, metavar="MU",
                             help="fedavg: FedProx, each client adds (MU/2)*||w - w_round||^2 to its loss "
                                  "(default: 0, FedAvg)")
    experiments.add_argument("--target-accuracy", type=fraction, metavar="A",
                             help="stop at the first tested epoch or round whose test accuracy reaches A (a fraction, "
                                  "0.99 is 99%%) and report it; --epochs stays the limit")
    experiments.add_argument("--test-every", type=positive_int, default=1, metavar="K",
                             help="test after every K epochs or rounds, and after the last (default: 1)")
    experiments.add_argument("--aggregation", choices=("server", "trusted", "secure"), default="server",
                             help="fedavg: how the server gets the average: every copy comes back (default); "
                                  "trusted: a separate aggregator averages (Part 04); secure: additive secret "
                                  "sharing, only the sum is decoded (Part 10)")
    privacy = parser.add_argument_group("differentially private FedAvg (README, \"Privacy\")")
    privacy.add_argument("--dp-clip", type=positive_float, metavar="C",
                         help="fedavg: each client trains (--train-on client, the default with it) and clips its "
                              "update (its weights minus the round's) to L2 norm C; epsilon is printed every round")
    privacy.add_argument("--dp-noise", type=non_negative_float, metavar="Z",
                         help="with --dp-clip: Gaussian noise of std Z*C/m on the average of the m updates (by the "
                              "server, or with secure|trusted by the clients, each its part) (default: 0)")
    privacy.add_argument("--dp-delta", type=open_fraction, default=dp.DEFAULT_DELTA, metavar="D",
                         help="with --dp-clip: the delta that epsilon is reported at (default: 1e-5)")
    experiments.add_argument("--dropout", type=probability, default=0.1, metavar="P",
                             help="SimpleCNN's dropout probability (default: 0.1)")
    experiments.add_argument("--metrics-out", metavar="PATH",
                             help="write config, partition and per-epoch metrics as JSON to PATH")
    experiments.add_argument("--plot", metavar="PATH",
                             help="draw test accuracy and loss per epoch into a PNG at PATH")
    remote = parser.add_argument_group("clients in their own processes (README, \"Separate parties\")")
    remote.add_argument("--workers", choices=("virtual", "websocket"), default="virtual",
                        help="virtual: VirtualWorkers in this process, as in the course (default); websocket: "
                             "each client is its own process (syft's WebsocketServerWorker)")
    remote.add_argument("--connect", type=parse_connect, metavar="NAME=HOST:PORT,...",
                        help="websocket: use clients already running (python -m fl_tutorial.worker) instead of "
                             "starting them on 127.0.0.1")
    remote.add_argument("--token-file", metavar="FILE",
                        help="websocket: the token the clients were started with")
    remote.add_argument("--ca", metavar="FILE",
                        help="websocket with --connect: the clients serve wss://; verify them against this CA")
    remote.add_argument("--aggregator", type=parse_address, metavar="HOST:PORT",
                        help="websocket with --connect and --aggregation trusted: the aggregator, started with "
                             "python -m fl_tutorial.worker --id aggregator --aggregator")
    remote.add_argument("--in-turn", action="store_true",
                        help="websocket with fedavg: train the clients one after the other, not at the same time")
    remote.add_argument("--train-on", choices=("coordinator", "client"),
                        help="who runs training: the coordinator, step by step through pointers, as in the course "
                             "(default, but for websocket fedavg); or each client, on its own share, one request "
                             "per visit (default for websocket fedavg; the clients it starts are then train-only)")
    remote.add_argument("--data-from", choices=("clients", "server"),
                        help="websocket: clients read their own MNIST and keep their share (default), or the "
                             "server sends each its share with .federate(), as the course does")


@dataclass(frozen=True)
class Settings:
    """Every flag of federated_learning.py, as given or as its checks completed it; in --help's order.

    The metrics file's "config" is this, as a dict (config()).
    """

    batch_size: Union[int, str]  # "full": each client's whole share in one batch (FedSGD)
    test_batch_size: int
    epochs: int
    lr: float
    seed: int
    log_interval: int
    data_dir: str
    device: str
    save_model: Optional[str]
    sync: str
    max_batches: Optional[int]
    num_clients: int
    partition: str
    shards_per_client: Optional[int]
    dirichlet_alpha: Optional[float]
    strategy: str
    local_epochs: int
    clients_per_round: Optional[int]
    prox_mu: float
    target_accuracy: Optional[float]
    test_every: int
    aggregation: str
    dp_clip: Optional[float]
    dp_noise: Optional[float]
    dp_delta: float
    dropout: float
    metrics_out: Optional[str]
    plot: Optional[str]
    workers: str
    connect: Optional[Tuple[Tuple[str, str, int], ...]]
    token_file: Optional[str]
    ca: Optional[str]
    aggregator: Optional[Tuple[str, int]]
    in_turn: bool
    train_on: str
    data_from: str

    @property
    def beyond_the_course(self):
        """Anything but the course's own loop: sequential model passing over VirtualWorkers, IID, tested every epoch."""
        return not (self.strategy == "sequential" and self.workers == "virtual" and self.train_on == "coordinator"
                    and self.partition == "iid" and self.test_every == 1 and self.target_accuracy is None)

    @property
    def rule(self):
        """How the training set is split (core/partition.py): the same on the coordinator and every client."""
        return partition.rule(self.partition, self.num_clients, self.seed, self.shards_per_client,
                              self.dirichlet_alpha)

    def local_training(self, batch_size=None):
        """What a data owner that trains itself needs to know (--train-on client)."""
        return LocalTraining(lr=self.lr, dropout=self.dropout, batch_size=batch_size or self.batch_size,
                             prox_mu=self.prox_mu, clip=self.dp_clip)

    def config(self):
        """The settings as the metrics file records them (JSON types)."""
        return asdict(self)


def parse(parser, argv=None):
    """The command line, checked as a whole: Settings, or argparse's usage error naming what to change."""
    args = parser.parse_args(argv)
    values = dict(vars(args))
    try:
        values.update(_filled_in(args))
    except (Unworkable, partition.PartitionError, security.SecurityError) as error:
        parser.error(str(error))
    values["connect"] = tuple(tuple(c) for c in args.connect) if args.connect else None
    return Settings(**values)


class Unworkable(ValueError):
    """Flags that cannot work together; the message says which, and what to change."""


def _filled_in(args):
    """Checks the flags together, in --help's order of concerns; returns the defaults that depend on others."""
    rule = partition.rule(args.partition, args.num_clients, args.seed, args.shards_per_client, args.dirichlet_alpha)
    if args.strategy == "sequential":
        for flag, given in (("--local-epochs", args.local_epochs != 1), ("--clients-per-round", args.clients_per_round),
                            ("--prox-mu", args.prox_mu), ("--batch-size full", args.batch_size == "full")):
            if given:
                raise Unworkable("{} needs --strategy fedavg".format(flag))
    if args.sync == "every-batch" and (args.strategy != "sequential" or args.partition != "iid"):
        raise Unworkable("--sync every-batch is the course's loop: use it with the default "
                         "--strategy sequential and --partition iid")
    filled = dict(_workers(args), shards_per_client=rule["shards_per_client"])
    for flag, path in (("--save-model", args.save_model), ("--metrics-out", args.metrics_out), ("--plot", args.plot)):
        problem = path and files.cannot_write(path)
        if problem:
            raise Unworkable("{} {}: {}".format(flag, path, problem))
    _aggregation(args, filled["num_clients"], filled["train_on"])
    _dp(args, filled["train_on"])
    if args.aggregator and not (args.connect and args.aggregation == "trusted"):
        raise Unworkable("--aggregator is for --aggregation trusted with --connect (this run starts its own otherwise)")
    if args.connect and args.aggregation == "trusted" and not args.aggregator:
        raise Unworkable("--aggregation trusted with --connect: give --aggregator HOST:PORT, where "
                         "python -m fl_tutorial.worker --id aggregator --aggregator runs")
    problem = sampling.problem(args.clients_per_round, filled["num_clients"])
    if problem:
        raise Unworkable(problem)
    return filled


def _workers(args):
    """--workers websocket and its companions; returns --num-clients (from --connect), --data-from, --train-on."""
    websocket_flags = [flag for flag, value in (("--connect", args.connect), ("--token-file", args.token_file),
                                                ("--ca", args.ca), ("--data-from", args.data_from),
                                                ("--in-turn", args.in_turn)) if value]
    if args.workers == "virtual" and websocket_flags:
        raise Unworkable("{} needs --workers websocket".format(websocket_flags[0]))
    if args.ca and not args.connect:
        raise Unworkable("--ca is for clients started elsewhere: give --connect too")
    if args.token_file:  # unreadable or too short now, not after the clients have started
        security.read_token(args.token_file)
    if args.ca:
        security.client_sslopt(args.ca)
    if args.connect and args.num_clients not in (None, len(args.connect)):
        raise Unworkable("--connect names {} client(s), but --num-clients is {}".format(
            len(args.connect), args.num_clients))
    num_clients = args.num_clients or (len(args.connect) if args.connect else 2)
    if args.train_on == "client" and (args.data_from == "server" or args.sync == "every-batch"):
        raise Unworkable("--train-on client trains on the clients' own data, a visit at a time: leave out {}".format(
            "--data-from server" if args.data_from == "server" else "--sync every-batch"))
    data_from = args.data_from or ("clients" if args.workers == "websocket" else "server")
    fedavg_on_owners = args.workers == "websocket" and args.strategy == "fedavg" and data_from == "clients"
    dp_on_owners = args.dp_clip is not None and args.data_from != "server"  # DP-FedAvg: each client clips its own
    train_on = args.train_on or ("client" if (fedavg_on_owners or dp_on_owners) and args.sync == "per-visit"
                                 else "coordinator")
    train_only = train_on == "client" and args.workers == "websocket" and not args.connect
    if train_only and args.batch_size != "full" and args.batch_size < MIN_BATCH_TRAIN_ONLY:
        raise Unworkable("--batch-size {}: the clients this run starts are train-only data owners, which train on "
                         "batches of at least {} samples; use --batch-size {} or more, or --train-on coordinator"
                         .format(args.batch_size, MIN_BATCH_TRAIN_ONLY, MIN_BATCH_TRAIN_ONLY))
    return {"num_clients": num_clients, "data_from": data_from, "train_on": train_on}


def _aggregation(args, num_clients, train_on):
    """--aggregation trusted|secure: FedAvg's, and across processes each client shares what it trained itself."""
    if args.aggregation == "server":
        return
    if args.strategy != "fedavg":
        raise Unworkable("--aggregation {} is for --strategy fedavg".format(args.aggregation))
    if args.workers == "websocket" and train_on != "client":
        raise Unworkable("--aggregation {} across processes: each client shares the update it trained itself; "
                         "leave out --train-on coordinator (and --data-from server, --sync every-batch)".format(
                             args.aggregation))
    if args.workers == "virtual" and args.dp_clip is not None:
        raise Unworkable("--aggregation {} with --dp-clip needs clients that clip and share their own updates: use "
                         "--workers websocket".format(args.aggregation))
    if args.workers == "virtual" and train_on == "client":
        raise Unworkable("--aggregation {} with VirtualWorkers keeps the copies on the clients, but with --train-on "
                         "client each client sends its weights back: use --train-on coordinator, or --workers "
                         "websocket".format(args.aggregation))
    if ((args.aggregation == "secure" or args.workers == "websocket")
            and min(num_clients, args.clients_per_round or num_clients) < 2):
        raise Unworkable("--aggregation {} needs at least 2 clients a round: a sum of one update is the update".format(
            args.aggregation))


def _dp(args, train_on):
    """DP-FedAvg's flags: the clients clip their own updates, so FedAvg with --train-on client."""
    if args.dp_clip is None:
        for flag, given in (("--dp-noise", args.dp_noise is not None),
                            ("--dp-delta", args.dp_delta != dp.DEFAULT_DELTA)):
            if given:
                raise Unworkable("{} needs --dp-clip C: noise is measured against the clipping bound".format(flag))
        return
    if args.strategy != "fedavg":
        raise Unworkable("--dp-clip is DP-FedAvg: use --strategy fedavg (the course's sequential loop has no round "
                         "to clip and noise)")
    if train_on != "client":
        given = [flag for flag, value in (("--train-on coordinator", args.train_on), ("--data-from server",
                 args.data_from == "server"), ("--sync every-batch", args.sync == "every-batch")) if value]
        raise Unworkable("--dp-clip: each client clips its own update, so it must train itself: leave out {}".format(
            " and ".join(given)))
