"""What a run reports: progress while training, a metrics file, and a plot.

On a terminal, progress is a tqdm bar with the current worker and loss; in
Jupyter it is tqdm's notebook widget; when the output goes to a file or a pipe,
it is the course's log lines instead.
"""
import json
import sys
import threading
import time

from tqdm import tqdm

from fl_tutorial.core.files import atomic_write


class Progress:
    """One epoch (or FedAvg round) of training: shows progress, averages each client's loss.

    A context manager: the bar closes when training ends; `started` times the epoch for its record.
    """

    def __init__(self, label, epoch, total, log_interval, stream=None):
        self.label, self.epoch, self.total, self.log_interval = label, epoch, total, log_interval
        self.started = time.time()
        self.stream = stream or sys.stdout
        self.seen = self.batches = 0
        self.loss_sums, self.loss_counts = {}, {}
        self.lock = threading.Lock()  # FedAvg's clients may report from their own threads
        self.bar = None
        desc = "{} {}".format(label, epoch)
        if self.stream is sys.stdout and in_jupyter():
            from tqdm.notebook import tqdm as notebook_tqdm

            self.bar = notebook_tqdm(total=total, unit="img", desc=desc, leave=True)
        elif self.stream.isatty():
            self.bar = tqdm(total=total, unit="img", desc=desc, file=self.stream, dynamic_ncols=True, leave=False)

    def update(self, worker_id, n, loss):
        """A batch of n samples was trained on `worker_id` with this loss (None: the client keeps it to itself)."""
        with self.lock:
            self._update(worker_id, n, loss)

    def _update(self, worker_id, n, loss):
        if loss is not None:
            self.loss_sums[worker_id] = self.loss_sums.get(worker_id, 0.0) + loss * n
            self.loss_counts[worker_id] = self.loss_counts.get(worker_id, 0) + n
        self.seen += n
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(worker=worker_id, loss="-" if loss is None else "{:.4f}".format(loss))
        elif self.batches % self.log_interval == 0:
            print("Train {}: {} [{}/{} ({:.0f}%)]\tWorker: {}\tLoss: {}".format(
                self.label, self.epoch, self.seen, self.total, 100.0 * self.seen / self.total,
                worker_id, "-" if loss is None else "{:.6f}".format(loss)), file=self.stream, flush=True)
        self.batches += 1

    def client_losses(self):
        """Mean training loss per client over this epoch (of the clients that tell it)."""
        return {w: self.loss_sums[w] / self.loss_counts[w] for w in self.loss_sums}

    def close(self):
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def record(epoch, progress, tested=None, **extra):
    """An epoch's (or round's) record for Metrics.add: the clients' training losses, the test result

    (loss, accuracy, per-class accuracy) if it was tested, and the seconds since training began;
    `extra` ("clients", "aggregation_seconds", "epsilon") goes where the metrics file has always had it.
    """
    entry = {"epoch": epoch, "train_loss": progress.client_losses()}
    if "clients" in extra:
        entry["clients"] = extra.pop("clients")
    if tested is not None:
        entry.update(zip(("test_loss", "test_accuracy", "test_accuracy_per_class"), tested))
    entry["seconds"] = time.time() - progress.started
    entry.update(extra)
    return entry


def in_jupyter():
    """True inside a Jupyter kernel (a notebook, or papermill running one)."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return type(shell).__name__ == "ZMQInteractiveShell"


class Metrics:
    """The run's history; written after every epoch so an interrupted run keeps what it finished.

    With a target accuracy (--target-accuracy) it also keeps "target": the first
    tested epoch or round that reached it (None until one does) and the best so far.
    """

    def __init__(self, config, partition, path=None, plot_path=None, target=None, stream=None, privacy=None):
        self.path, self.plot_path, self.stream = path, plot_path, stream or sys.stdout
        self.data = {"config": config, "partition": partition, "epochs": []}
        if privacy:  # DP-FedAvg: delta and the accountant; each round's record has its "epsilon"
            self.data["privacy"] = privacy
        if target is not None:
            self.data["target"] = {"accuracy": target, "reached_at": None, "seconds": None,
                                   "best_accuracy": None, "best_at": None}

    @property
    def reached_target(self):
        return "target" in self.data and self.data["target"]["reached_at"] is not None

    def add(self, record):
        self.data["epochs"].append(record)
        target = self.data.get("target")
        if target and "test_accuracy" in record:
            if target["best_accuracy"] is None or record["test_accuracy"] > target["best_accuracy"]:
                target["best_accuracy"], target["best_at"] = record["test_accuracy"], record["epoch"]
            if target["reached_at"] is None and record["test_accuracy"] >= target["accuracy"]:
                target["reached_at"] = record["epoch"]
                target["seconds"] = sum(e["seconds"] for e in self.data["epochs"])
        if self.path:
            atomic_write(self.path, lambda f: f.write(json.dumps(self.data, indent=2).encode()))
        if self.plot_path:
            plot(self.data, self.plot_path)

    def summary(self):
        """With a target: one line, the epoch or round that reached it, or the best reached instead."""
        target = self.data.get("target")
        if not target:
            return
        unit = "round" if self.data["config"].get("strategy") == "fedavg" else "epoch"
        done = len(self.data["epochs"])
        if target["reached_at"] is not None:
            line = "Target reached: {:.2f}% test accuracy after {} {} ({:.0f} s of training and testing).".format(
                100 * target["accuracy"], unit, target["reached_at"], target["seconds"])
        elif target["best_accuracy"] is None:
            line = "Target not reached: no {} was tested.".format(unit)
        else:
            line = "Target not reached: {:.2f}% in {} {}s; the best was {:.2f}% after {} {}.".format(
                100 * target["accuracy"], done, unit, 100 * target["best_accuracy"], unit, target["best_at"])
        print(line, file=self.stream, flush=True)


MAX_LEGEND_CLIENTS = 10


def figure(data):
    """Test accuracy, test loss and each client's training loss against epoch (or round).

    A plain matplotlib Figure, without pyplot: it leaves the caller's backend alone
    (Jupyter's inline one, say) and needs no closing. Jupyter shows it as the cell's value.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    config, epochs = data["config"], data["epochs"]
    x_label = "round" if config.get("strategy") == "fedavg" else "epoch"
    tested = [e for e in epochs if "test_accuracy" in e]  # --test-every K: not every epoch or round
    xs = [e["epoch"] for e in tested]
    marker = "o" if len(xs) <= 50 else None
    fig = Figure(figsize=(15, 4))
    acc_ax, loss_ax, train_ax = fig.subplots(1, 3)
    acc_ax.plot(xs, [100 * e["test_accuracy"] for e in tested], marker=marker)
    acc_ax.set(xlabel=x_label, ylabel="test accuracy (%)", title="Test accuracy")
    target = data.get("target")
    if target:
        acc_ax.axhline(100 * target["accuracy"], color="tab:green", linestyle="--", linewidth=1,
                       label="target {:.4g}%".format(100 * target["accuracy"]))
        if target["reached_at"] is not None:
            acc_ax.axvline(target["reached_at"], color="tab:green", linestyle=":", linewidth=1,
                           label="reached at {} {}".format(x_label, target["reached_at"]))
        acc_ax.legend(fontsize="small")
    spent = [(e["epoch"], e["epsilon"]) for e in epochs if e.get("epsilon") is not None]
    if spent:  # DP-FedAvg: the privacy spent, on its own axis
        eps_ax = acc_ax.twinx()
        eps_ax.plot(*zip(*spent), color="tab:purple", linestyle="--", marker=".")
        eps_ax.set_ylabel("epsilon at delta = {:g}".format(data["privacy"]["delta"]), color="tab:purple")
        acc_ax.set_title("Test accuracy, and privacy spent (dashed)")
    loss_ax.plot(xs, [e["test_loss"] for e in tested], marker=marker, color="tab:red")
    loss_ax.set(xlabel=x_label, ylabel="test loss (cross-entropy)", title="Test loss")
    clients = [c["client"] for c in data.get("partition", [])] or sorted({w for e in epochs for w in e["train_loss"]})
    plotted = 0
    for client in clients:
        points = [(e["epoch"], e["train_loss"][client]) for e in epochs if client in e["train_loss"]]
        if points:
            train_ax.plot(*zip(*points), marker=".", label=client)
            plotted += 1
    train_ax.set(xlabel=x_label, ylabel="training loss (cross-entropy)", title="Training loss per client")
    if 0 < plotted <= MAX_LEGEND_CLIENTS:
        train_ax.legend(fontsize="small")
    elif not plotted:  # train-only data owners (--train-on client) keep their losses to themselves
        train_ax.text(0.5, 0.5, "not reported by the clients", ha="center", va="center", transform=train_ax.transAxes)
    for ax in (acc_ax, loss_ax, train_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and rounds are whole numbers
        if len(epochs) == 1:
            ax.set_xticks([epochs[0]["epoch"]])
    fig.suptitle("{} clients, {}, {} (lr {})".format(
        config.get("num_clients"), config.get("partition"), config.get("strategy"), config.get("lr")))
    fig.tight_layout()
    return fig


def plot(data, path):
    """Save figure(data) as a PNG at path, atomically."""
    fig = figure(data)
    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"))
