"""The federated run does what the tutorial says, and computes what plain PyTorch computes."""
import argparse

import pytest
import torch
import torch.nn.functional as F
import torch.optim as optim
from torchvision import datasets

import federated_learning as fl
from fl_tutorial import mnist


def federated_loader(sy, data_dir, workers, batch_size=64):
    """Exactly the script's step 2."""
    mnist.ensure(data_dir)
    train_set = datasets.MNIST(data_dir, train=True, transform=mnist.TRANSFORM)
    return sy.FederatedDataLoader(train_set.federate(tuple(workers)), batch_size=batch_size, shuffle=True)


def peek(pointer):
    """A local copy of what a pointer points to, read from the VirtualWorker's store: no message sent."""
    return pointer.location.get_obj(pointer.child.id_at_location).clone()


class RecordingLoader:
    """Wraps a FederatedDataLoader; before each batch is handed out, checks and records the state.

    When train() asks for batch k+1, step k is finished, so this is where
    "the model is back on the server" must hold. It keeps a local copy of each
    batch and torch's RNG state (dropout draws from it), so that plain PyTorch
    can replay the very same steps.
    """

    def __init__(self, loader, model):
        self.loader, self.model = loader, model
        self.federated_dataset = loader.federated_dataset
        self.batches = []

    def __iter__(self):
        for data, target in self.loader:
            assert self.model.location is None, "model not back on the server before the next batch"
            assert all(not hasattr(p, "child") for p in self.model.parameters())
            self.batches.append((data.location.id, peek(data), peek(target), torch.get_rng_state()))
            yield data, target


def args_for(lr):
    return argparse.Namespace(lr=lr, log_interval=10 ** 9, batch_size=64)


def test_batches_live_on_both_clients_every_epoch(sy, mnist_dir, workers):
    loader = federated_loader(sy, mnist_dir, workers)
    for epoch in range(2):
        seen = {"client1": 0, "client2": 0}
        order = []
        for data, target in loader:
            assert type(data.child).__name__ == "PointerTensor"
            assert data.location.id == target.location.id
            seen[data.location.id] += data.shape[0]
            if not order or order[-1] != data.location.id:
                order.append(data.location.id)
        # .federate() halves the 640 samples; syft walks all of client1, then all of client2.
        assert seen == {"client1": 320, "client2": 320}, "epoch {}".format(epoch)
        assert order == ["client1", "client2"]


def test_model_travels_and_comes_back_each_step(sy, mnist_dir, workers, capsys):
    model = fl.SimpleCNN()
    loader = RecordingLoader(federated_loader(sy, mnist_dir, workers), model)
    fl.train(args_for(0.05), model, torch.device("cpu"), loader, optim.SGD(model.parameters(), lr=0.05), 1)
    assert model.location is None and all(not hasattr(p, "child") for p in model.parameters())
    assert len(loader.batches) == 10
    # Nothing of the model is left behind on the clients: only their data.
    for worker in workers:
        assert len(worker._objects) == 2


def test_federated_training_equals_plain_pytorch(sy, mnist_dir, workers):
    torch.manual_seed(0)
    model = fl.SimpleCNN()
    plain = fl.SimpleCNN()
    plain.load_state_dict(model.state_dict())
    start = {k: v.clone() for k, v in model.state_dict().items()}

    loader = RecordingLoader(federated_loader(sy, mnist_dir, workers), model)
    optimizer = optim.SGD(model.parameters(), lr=0.05)
    for epoch in (1, 2):
        fl.train(args_for(0.05), model, torch.device("cpu"), loader, optimizer, epoch)

    plain.train()
    plain_optimizer = optim.SGD(plain.parameters(), lr=0.05)
    for _, data, target, rng_state in loader.batches:
        torch.set_rng_state(rng_state)
        plain_optimizer.zero_grad()
        F.cross_entropy(plain(data), target).backward()
        plain_optimizer.step()

    assert [b[0] for b in loader.batches] == ["client1"] * 5 + ["client2"] * 5 + ["client1"] * 5 + ["client2"] * 5
    federated, reference = model.state_dict(), plain.state_dict()
    for name in reference:
        assert not torch.equal(federated[name], start[name]), name + " did not train"
        assert torch.allclose(federated[name], reference[name], rtol=1e-5, atol=1e-6), name


def test_test_reports_loss_and_accuracy(mnist_dir, capsys):
    mnist.ensure(mnist_dir)
    test_set = datasets.MNIST(mnist_dir, train=False, transform=mnist.TRANSFORM)
    loader = torch.utils.data.DataLoader(test_set, batch_size=64)
    model = fl.SimpleCNN()
    loss, accuracy = fl.test(model, torch.device("cpu"), loader)
    out = capsys.readouterr().out
    assert "Test set: Average loss: {:.4f}, Accuracy: {}/200".format(loss, round(accuracy * 200)) in out
    assert loss == pytest.approx(2.3, abs=0.3)  # an untrained 10-class model
