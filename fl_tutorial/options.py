"""The flags the course never had, and their checks: experiments, and clients in their own processes.

federated_learning.py keeps the course's flags and calls add() and check(), so
that the script reads as the tutorial; `--help` shows everything, grouped.
"""
from fl_tutorial import client_training, dp, files, security, websocket_clients
from fl_tutorial.cli import fraction, non_negative_float, open_fraction, positive_float, positive_int, probability


def add(parser):
    """The "experiments" and "clients in their own processes" groups of --help."""
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
                         help="fedavg with --train-on client: each client clips its update (its weights minus the "
                              "round's) to L2 norm C; epsilon is printed after every round")
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
    remote.add_argument("--connect", type=websocket_clients.parse_connect, metavar="NAME=HOST:PORT,...",
                        help="websocket: use clients already running (python -m fl_tutorial.worker) instead of "
                             "starting them on 127.0.0.1")
    remote.add_argument("--token-file", metavar="FILE",
                        help="websocket: the token the clients were started with")
    remote.add_argument("--ca", metavar="FILE",
                        help="websocket with --connect: the clients serve wss://; verify them against this CA")
    remote.add_argument("--aggregator", type=websocket_clients.parse_address, metavar="HOST:PORT",
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


def check(parser, args):
    """Combinations that cannot work end in argparse's usage error (exit status 2); fills in the defaults
    that depend on other flags (--num-clients, --shards-per-client, --data-from, --train-on)."""
    if args.partition == "iid" and (args.shards_per_client or args.dirichlet_alpha):
        parser.error("--shards-per-client and --dirichlet-alpha need --partition noniid")
    if args.shards_per_client and args.dirichlet_alpha:
        parser.error("choose one of --shards-per-client and --dirichlet-alpha")
    if args.partition == "noniid" and not args.dirichlet_alpha:
        args.shards_per_client = args.shards_per_client or 2
    if args.strategy == "sequential":
        for flag, given in (("--local-epochs", args.local_epochs != 1), ("--clients-per-round", args.clients_per_round),
                            ("--prox-mu", args.prox_mu), ("--batch-size full", args.batch_size == "full")):
            if given:
                parser.error("{} needs --strategy fedavg".format(flag))
    if args.sync == "every-batch" and (args.strategy != "sequential" or args.partition != "iid"):
        parser.error("--sync every-batch is the course's loop: use it with the default "
                     "--strategy sequential and --partition iid")
    _check_workers(parser, args)
    for flag, path in (("--save-model", args.save_model), ("--metrics-out", args.metrics_out), ("--plot", args.plot)):
        problem = path and files.cannot_write(path)
        if problem:
            parser.error("{} {}: {}".format(flag, path, problem))
    if args.aggregation != "server":
        if args.strategy != "fedavg":
            parser.error("--aggregation {} is for --strategy fedavg".format(args.aggregation))
        if args.workers == "websocket" and args.train_on != "client":
            parser.error("--aggregation {} across processes: each client shares the update it trained itself; "
                         "leave out --train-on coordinator (and --data-from server, --sync every-batch)".format(
                             args.aggregation))
        if args.workers == "virtual" and args.train_on == "client":
            parser.error("--aggregation {} with VirtualWorkers keeps the copies on the clients, but with --train-on "
                         "client each client sends its weights back: use --train-on coordinator, or --workers "
                         "websocket".format(args.aggregation))
        if ((args.aggregation == "secure" or args.workers == "websocket")
                and min(args.num_clients, args.clients_per_round or args.num_clients) < 2):
            parser.error("--aggregation {} needs at least 2 clients a round: a sum of one update is the update".format(
                args.aggregation))
    _check_dp(parser, args)
    if args.aggregator and not (args.connect and args.aggregation == "trusted"):
        parser.error("--aggregator is for --aggregation trusted with --connect (this run starts its own otherwise)")
    if args.connect and args.aggregation == "trusted" and not args.aggregator:
        parser.error("--aggregation trusted with --connect: give --aggregator HOST:PORT, where "
                     "python -m fl_tutorial.worker --id aggregator --aggregator runs")
    if args.clients_per_round and args.clients_per_round > args.num_clients:
        parser.error("--clients-per-round {}: there are only {} clients".format(args.clients_per_round,
                                                                              args.num_clients))


def _check_dp(parser, args):
    """DP-FedAvg's flags: the clients clip their own updates, so FedAvg with --train-on client."""
    if args.dp_clip is None:
        for flag, given in (("--dp-noise", args.dp_noise is not None), ("--dp-delta", args.dp_delta != dp.DEFAULT_DELTA)):
            if given:
                parser.error("{} needs --dp-clip C: noise is measured against the clipping bound".format(flag))
        return
    if args.strategy != "fedavg":
        parser.error("--dp-clip is DP-FedAvg: use --strategy fedavg (the course's sequential loop has no round "
                     "to clip and noise)")
    if args.train_on != "client":
        parser.error("--dp-clip: each client clips its own update, so it must train itself: use --train-on client")


def _check_workers(parser, args):
    """--workers websocket and its companions; fills in --num-clients from --connect, --data-from, --train-on."""
    websocket_flags = [flag for flag, value in (("--connect", args.connect), ("--token-file", args.token_file),
                                                ("--ca", args.ca), ("--data-from", args.data_from),
                                                ("--in-turn", args.in_turn)) if value]
    if args.workers == "virtual" and websocket_flags:
        parser.error("{} needs --workers websocket".format(websocket_flags[0]))
    if args.ca and not args.connect:
        parser.error("--ca is for clients started elsewhere: give --connect too")
    try:  # unreadable or too short now, not after the clients have started
        args.token_file and security.read_token(args.token_file)
        args.ca and security.client_sslopt(args.ca)
    except security.SecurityError as error:
        parser.error(str(error))
    if args.connect and args.num_clients not in (None, len(args.connect)):
        parser.error("--connect names {} client(s), but --num-clients is {}".format(len(args.connect), args.num_clients))
    args.num_clients = args.num_clients or (len(args.connect) if args.connect else 2)
    if args.train_on == "client" and (args.data_from == "server" or args.sync == "every-batch"):
        parser.error("--train-on client trains on the clients' own data, a visit at a time: leave out {}".format(
            "--data-from server" if args.data_from == "server" else "--sync every-batch"))
    args.data_from = args.data_from or ("clients" if args.workers == "websocket" else "server")
    fedavg_on_owners = args.workers == "websocket" and args.strategy == "fedavg" and args.data_from == "clients"
    args.train_on = args.train_on or ("client" if fedavg_on_owners and args.sync == "per-visit" else "coordinator")
    train_only = args.train_on == "client" and args.workers == "websocket" and not args.connect
    if train_only and args.batch_size != "full" and args.batch_size < client_training.MIN_BATCH_TRAIN_ONLY:
        parser.error("--batch-size {}: the clients this run starts are train-only data owners, which train on batches "
                     "of at least {} samples; use --batch-size {} or more, or --train-on coordinator".format(
                         args.batch_size, client_training.MIN_BATCH_TRAIN_ONLY, client_training.MIN_BATCH_TRAIN_ONLY))
