"""The federated run does what the tutorial says, and computes what plain PyTorch computes."""
import pytest
import torch
from torchvision import datasets

import federated_learning as fl
from fl_tutorial.core import mnist
from fl_tutorial.core.model import SimpleCNN
from helpers import CPU, Recorder, args_for, replay_in_plain_pytorch, train_epochs


def test_batches_live_on_both_clients_every_epoch(sy, mnist_dir, workers):
    mnist.ensure(mnist_dir)
    federated, _ = fl.federated_mnist(args_for(mnist_dir, "--sync", "every-batch"), tuple(workers))
    loader = sy.FederatedDataLoader(federated, batch_size=64, shuffle=True)
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


@pytest.mark.parametrize("sync, visits_per_epoch", [("every-batch", 10), ("per-visit", 2)])
def test_model_travels_and_comes_back(sy, mnist_dir, workers, sync, visits_per_epoch):
    mnist.ensure(mnist_dir)
    model = SimpleCNN()
    recorder = Recorder(model)  # checks that the model is on the server before every visit and after train()
    loader = train_epochs(sy, args_for(mnist_dir, "--sync", sync), model, workers, epochs=2, recorder=recorder)
    assert model.location is None and all(not hasattr(p, "child") for p in model.parameters())
    assert len(recorder.visits) == 2 * visits_per_epoch
    assert [b[0] for b in recorder.batches] == (["client1"] * 5 + ["client2"] * 5) * 2
    # Nothing of the model or of the batches is left behind on the clients: only their data.
    for worker in workers:
        dataset = loader.federated_dataset[worker.id]
        assert set(worker._objects) == {dataset.data.child.id_at_location, dataset.targets.child.id_at_location}


@pytest.mark.parametrize("sync", ["every-batch", "per-visit"])
def test_federated_training_equals_plain_pytorch(sy, mnist_dir, workers, sync):
    mnist.ensure(mnist_dir)
    torch.manual_seed(0)
    model = SimpleCNN()
    recorder = Recorder(model)
    start = {k: v.clone() for k, v in model.state_dict().items()}

    train_epochs(sy, args_for(mnist_dir, "--sync", sync), model, workers, epochs=2, recorder=recorder)

    assert len(recorder.batches) == 20
    federated, reference = model.state_dict(), replay_in_plain_pytorch(start, recorder.batches)
    for name in reference:
        assert not torch.equal(federated[name], start[name]), name + " did not train"
        assert torch.allclose(federated[name], reference[name], rtol=1e-5, atol=1e-6), name


def test_test_reports_loss_accuracy_and_per_class_accuracy(mnist_dir, capsys):
    mnist.ensure(mnist_dir)
    test_set = datasets.MNIST(mnist_dir, train=False, transform=mnist.TRANSFORM)
    loader = torch.utils.data.DataLoader(test_set, batch_size=64)
    torch.manual_seed(3)
    model = SimpleCNN()
    loss, accuracy, per_class = fl.test(model, CPU, loader)
    out = capsys.readouterr().out
    assert "Test set: Average loss: {:.4f}, Accuracy: {}/200".format(loss, round(accuracy * 200)) in out
    assert loss == pytest.approx(2.3, abs=0.3)  # an untrained 10-class model

    images = torch.stack([test_set[i][0] for i in range(len(test_set))])
    labels = torch.tensor([int(test_set[i][1]) for i in range(len(test_set))])
    with torch.no_grad():
        predicted = model.eval()(images).argmax(dim=1)
    expected = [(predicted[labels == c] == c).float().mean().item() for c in range(10)]
    assert per_class == pytest.approx(expected)
    assert accuracy == pytest.approx((predicted == labels).float().mean().item())
