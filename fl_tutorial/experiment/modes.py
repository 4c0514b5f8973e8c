"""Every mode beyond the course, run with the script's own six steps wherever the course's calls apply.

federated_learning.py runs the course itself: sequential model passing over
VirtualWorkers, IID, tested after every epoch. Everything else its flags ask for
comes here, in one call, with the script's step functions (Steps):

- step 1 and 2, the data owners and their shares: owners.py (VirtualWorkers from the
  script's create_workers(), IID data from its federated_mnist(), or their variants);
- steps 4 to 6: the script's train() and test() for sequential runs, or a FedAvg round
  (fedavg.py, which trains the copies with the script's train_steps()), for --epochs
  epochs or rounds, with FedAvg's clients per round (core/sampling.py), DP-FedAvg's
  privacy spent (privacy/dp.py), tests every --test-every rounds, and a stop at
  --target-accuracy.

The metrics file, the plot and the saved model are the script's own.
"""
import contextlib
from dataclasses import dataclass
from typing import Callable

from fl_tutorial.core import files, partition, report, sampling
from fl_tutorial.core.model import SimpleCNN
from fl_tutorial.experiment import owners, preflight
from fl_tutorial.experiment.fedavg import FedAvg, make_averaging
from fl_tutorial.privacy import dp
from fl_tutorial.pysyft import client_training
from fl_tutorial.pysyft.env import import_syft
from fl_tutorial.pysyft.visits import visits

sy = import_syft()


@dataclass(frozen=True)
class Steps:
    """The script's step functions, which every mode reuses where the course's calls apply."""

    create_workers: Callable  # step 1: (hook, num_clients) -> VirtualWorkers
    federated_mnist: Callable  # step 2: (settings, workers) -> .federate()'s dataset, the clients' table
    sgd: Callable  # (settings, parameters) -> the optimizer of sequential training
    train: Callable  # steps 4 and 5: (model, device, visits, optimizer, progress)
    train_steps: Callable  # training steps on a client's pointers: (model, device, batches, optimizer, progress)
    test: Callable  # step 6: (model, device, test_loader) -> loss, accuracy, per-class accuracy
    server_test_loader: Callable  # (settings) -> the test set's DataLoader, on the server


def run(settings, hook, device, steps, usage_error):
    """The run the settings ask for; returns the trained model (saved to --save-model, if given).

    usage_error(message): argparse's parser.error, for what shows only once the clients have their shares.
    """
    with contextlib.ExitStack() as cleanup:  # with --workers websocket: disconnects, stops the clients it started
        # Step 1: create the data owners.
        workers = owners.create(settings, hook, cleanup, steps.create_workers)

        # Step 2: send the data to the clients (or tell them how to take their share).
        try:
            federated_train_set, clients = owners.shares(settings, workers, steps.federated_mnist)
        except partition.PartitionError as error:  # clients started elsewhere split their own data
            usage_error(str(error))
        largest_share = max(c["samples"] for c in clients)
        problem = settings.batch_size == "full" and preflight.batch_problem(settings, largest_share)
        if problem:
            usage_error(problem)
        batch_size = preflight.train_batch(settings, largest_share)
        federated_train_loader = sy.FederatedDataLoader(federated_train_set, batch_size=batch_size, shuffle=True)
        test_loader = steps.server_test_loader(settings)
        print(partition.table(clients) + "\n", flush=True)

        # Step 3: build the model.
        model = SimpleCNN(dropout=settings.dropout).to(device)
        optimizer = steps.sgd(settings, model.parameters())
        averaging = make_averaging(settings, hook, workers.aggregator)
        fedavg = FedAvg(settings, averaging, steps.train_steps, device, batch_size)

        # Step 6: train and test, epoch by epoch or round by round.
        sampler = settings.clients_per_round and sampling.ClientSampler(  # FedAvg's C*K clients a round
            [w.id for w in workers], settings.clients_per_round, settings.seed)
        accountant = settings.dp_clip and dp.Accountant(  # DP-FedAvg's privacy spent
            settings.dp_noise or 0.0, settings.dp_delta, settings.num_clients,
            settings.clients_per_round or settings.num_clients)
        metrics = report.Metrics(settings.config(), clients, settings.metrics_out, settings.plot,
                                 settings.target_accuracy, privacy=accountant and accountant.describe())
        for epoch in range(1, settings.epochs + 1):
            chosen = sampler.next_round() if sampler else None
            with report.Progress("Round" if settings.strategy == "fedavg" else "Epoch", epoch,
                                 samples(settings, federated_train_set, chosen), settings.log_interval) as progress:
                if settings.strategy == "fedavg":
                    fedavg.round(model, federated_train_loader, progress, chosen)
                elif settings.train_on == "client":  # the model still passes from client to client
                    train_on_the_clients(settings, model, federated_train_loader, progress)
                else:
                    steps.train(model, device, visits(federated_train_loader, settings.sync == "every-batch",
                                                      settings.max_batches), optimizer, progress)
            tested = (steps.test(model, device, test_loader)
                      if epoch % settings.test_every == 0 or epoch == settings.epochs else None)
            metrics.add(report.record(epoch, progress, tested, **extras(settings, chosen, averaging, accountant)))
            if metrics.reached_target:  # --target-accuracy: the first round that reaches it ends the run
                break
        metrics.summary()
    if settings.save_model:
        print(files.save_model(model.state_dict(), settings.save_model, "federated_learning"))
    return model


def train_on_the_clients(settings, model, federated_train_loader, progress):
    """The course's model passing, each client training its visit itself: steps 4 and 5 in one request each
    (pysyft/client_training.py), on the very batches the course's loop would draw."""
    for worker, passes in client_training.plans(federated_train_loader, settings.max_batches):
        model.load_state_dict(client_training.train_visit(worker, model, passes, settings.local_training(), progress))


def samples(settings, federated_train_set, chosen):
    """How many samples an epoch, or a round of the chosen clients' local epochs, trains on."""
    shares = federated_train_set.datasets
    local_epochs = settings.local_epochs if settings.strategy == "fedavg" else 1
    return sum(len(shares[name]) for name in chosen or shares) * local_epochs


def extras(settings, chosen, averaging, accountant):
    """What a round's record holds beyond an epoch's: its clients, the averaging's time, the privacy spent."""
    extra = {}
    if chosen is not None:
        extra["clients"] = chosen
    if settings.strategy == "fedavg":
        extra["aggregation_seconds"] = averaging.seconds
    if accountant:  # prints it too: DP-FedAvg's epsilon after every round
        extra["epsilon"] = dp.report(accountant.step(), accountant.delta, accountant.rounds)
    return extra
