"""The task apart from Flower: the script's model, the script's shares, torch's own batch order, device choice."""
import os

import numpy as np
import pytest
import torch

from fl_tutorial.core import mnist, partition
from flower_twin import config, task
from twin_helpers import write_mnist


def test_simplecnn_is_the_scripts_with_1715594_parameters():
    model = task.SimpleCNN()
    assert sum(p.numel() for p in model.parameters()) == 1_715_594
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert type(model).__module__ == "fl_tutorial.core.model"  # the one class federated_learning.py imports


@pytest.mark.parametrize("changes", [
    {"partition": "iid", "num-clients": 3},
    {"partition": "noniid", "num-clients": 4, "shards-per-client": 3},
    {"partition": "noniid", "num-clients": 3, "dirichlet-alpha": 0.3, "seed": 7},
])
def test_each_client_loads_exactly_its_share_of_the_split(mnist_dir, changes):
    settings = config.settings(dict(config.defaults(), **changes))
    images, labels = mnist.load(mnist_dir)
    shares = partition.split(labels.numpy(), settings.rule())
    seen = []
    for index, share in enumerate(shares):
        mine_images, mine_labels = task.load_share(mnist_dir, tuple(settings.rule().items()), index)
        assert torch.equal(mine_images, images[torch.from_numpy(share)])
        assert torch.equal(mine_labels, labels[torch.from_numpy(share)])
        seen.extend(share.tolist())
    assert sorted(seen) == list(range(len(labels)))  # disjoint and complete


def test_a_partition_id_outside_the_run_is_refused(mnist_dir):
    rule = tuple(config.settings(config.defaults()).rule().items())
    with pytest.raises(partition.PartitionError, match="partition-id 2 is outside 0 to 1"):
        task.load_share(mnist_dir, rule, 2)


def test_load_is_the_scripts_normalisation_read_from_the_raw_files(tmp_path):
    mnist_dir = write_mnist(tmp_path)  # a folder of its own: the PySyft script writes processed/ in the shared one
    images, labels = mnist.load(mnist_dir, train=False)
    raw = mnist.read_idx(mnist.ensure_raw(mnist_dir)["t10k-images-idx3-ubyte"])
    expected = torch.stack([mnist.TRANSFORM(image) for image in raw.copy()])  # torchvision's per-image transform
    assert torch.equal(images, expected)
    assert labels.dtype == torch.int64 and len(labels) == len(images) == 200
    # torch 2.x writes no processed/*.pt, which the PySyft environment's torch 1.4 could not read
    assert not os.path.exists(os.path.join(mnist_dir, "MNIST", "processed"))


def test_batches_come_in_the_order_of_torchs_random_sampler_epoch_after_epoch():
    for n, batch_size in ((640, 64), (150, 64), (7, 3)):
        generator = torch.Generator().manual_seed(5)
        sampler = torch.utils.data.RandomSampler(range(n), generator=torch.Generator().manual_seed(5))
        loader = torch.utils.data.DataLoader(torch.arange(n), batch_size=batch_size, sampler=sampler)
        for _ in range(3):
            ours = [b.tolist() for b in task.batches(n, batch_size, generator)]
            assert ours == [b.tolist() for b in loader]
    assert len(list(task.batches(640, 64, torch.Generator().manual_seed(0), max_batches=3))) == 3


def test_round_seeds_differ_between_clients_and_rounds():
    seeds = {task.round_seed(1, r, i) for r in range(1, 50) for i in range(100)}
    assert len(seeds) == 49 * 100 and all(0 <= s < 2 ** 32 for s in seeds)


def test_devices_auto_picks_what_exists_and_a_forced_one_that_cannot_run_says_so(monkeypatch):
    assert task.pick_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert task.pick_device("auto").type == expected
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert task.pick_device("auto").type == "cpu"
    for name in ("cuda", "mps"):
        with pytest.raises(task.DeviceError, match=f"device {name} is not available here"):
            task.pick_device(name)


def test_training_and_testing_are_plain_pytorch_and_learn(mnist_dir):
    images, labels = mnist.load(mnist_dir)
    test_images, test_labels = mnist.load(mnist_dir, train=False)
    torch.manual_seed(0)
    model = task.SimpleCNN()
    before = task.test(model, test_images, test_labels, 100, torch.device("cpu"))[1]
    loss = task.train(model, images, labels, epochs=3, lr=0.05, batch_size=64, seed=1, device=torch.device("cpu"))
    _, accuracy, per_class = task.test(model, test_images, test_labels, 100, torch.device("cpu"))
    assert np.isfinite(loss) and accuracy >= 0.75 > before
    assert len(per_class) == 10
