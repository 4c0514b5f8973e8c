"""A small, learnable MNIST look-alike in MNIST's own IDX format, for both test suites.

numpy only, so that the PySyft suite (tests/, Python 3.8) and the Flower twin's
(flower/tests/, Python 3.11+) make the very same files.
"""
import gzip
import os
import struct

import numpy as np


def idx_bytes(array):
    """The IDX encoding MNIST uses: magic (2049 labels, 2051 images), sizes, then uint8 data."""
    magic = 2051 if array.ndim == 3 else 2049
    return struct.pack(">I" + "I" * array.ndim, magic, *array.shape) + array.astype(np.uint8).tobytes()


def synthetic_digits(n, seed):
    """Images whose class is a bright 8x8 block at one of ten positions, jittered and noisy."""
    rng = np.random.RandomState(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.randint(0, 60, size=(n, 28, 28))
    for image, label in zip(images, labels):
        row, col = divmod(int(label), 4)  # a 3 x 4 grid of cells, 10 used
        r, c = 2 + row * 8 + rng.randint(-1, 2), 1 + col * 7 + rng.randint(-1, 2)
        image[max(r, 0):r + 8, max(c, 0):c + 8] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_mnist(root, n_train=640, n_test=200, seed=0):
    """Write MNIST/raw/*.gz under root, as the real files are laid out."""
    raw = os.path.join(str(root), "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = synthetic_digits(n, s)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            with gzip.open(os.path.join(raw, "{}-{}-ubyte.gz".format(prefix, kind)), "wb") as f:
                f.write(idx_bytes(array))
    return str(root)
