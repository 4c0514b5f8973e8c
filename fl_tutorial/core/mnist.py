"""MNIST files for torchvision 0.5.0: found locally or downloaded from a working mirror, then verified.

torchvision 0.5.0 still downloads from yann.lecun.com, which no longer serves
MNIST, and it rejects re-compressed but otherwise identical .gz files because it
checks the .gz MD5. So we fetch and check the raw files ourselves and write the
`processed/*.pt` files that `torchvision.datasets.MNIST(root, download=False)` reads.

Downloads are checked against the MD5 of the original files' content and
written atomically (`*.part`, then rename). Files already on disk are checked by
structure (IDX magic number, shape, sizes, label range), so a re-compressed
copy or a small generated test set works offline too.
"""
import gzip
import hashlib
import os
import struct
import urllib.request
import zlib

import numpy as np
import torch
from torchvision import datasets, transforms

from fl_tutorial.core.files import atomic_write

# The mirror torchvision uses since 0.9, then TensorFlow's copy of the same files.
# MNIST_MIRRORS (base URLs, space-separated) replaces them, e.g. with a classroom server.
DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# File name -> MD5 of the original file's content (uncompressed). Checking the content
# rather than the .gz lets a mirror re-compress the files (a classroom server) and
# still be verified; an original .gz passes, since it unpacks to exactly this content.
RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
SPLITS = {  # processed file -> (images, labels), as torchvision 0.5.0 names them
    "training.pt": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test.pt": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# The normalisation of the PyTorch MNIST example and of the PySyft tutorials.
TRANSFORM = transforms.Compose(
    [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
)
IDX_MAGIC = {2049: 1, 2051: 3}  # labels: 1 dimension, images: 3


class DataError(RuntimeError):
    """MNIST is missing or damaged and cannot be fetched; the message says what to do."""


def configured_mirrors():
    return tuple(os.environ.get("MNIST_MIRRORS", "").split()) or DEFAULT_MIRRORS


def download(name, raw_dir, mirrors, md5=RAW_MD5, timeout=60):
    """Fetch `name`.gz from the first mirror whose file unpacks to the right MD5; return its path."""
    target = os.path.join(raw_dir, name + ".gz")
    failures = []
    for mirror in mirrors:
        url = mirror + name + ".gz"
        print("Downloading {}".format(url), flush=True)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                payload = response.read()
        except Exception as error:  # HTTP errors, refused connections, truncated bodies
            failures.append("{}: {}".format(url, error))
            continue
        try:
            digest = hashlib.md5(gzip.decompress(payload)).hexdigest()
        except (OSError, EOFError, zlib.error) as error:
            failures.append("{}: not a valid .gz file ({})".format(url, error))
            continue
        if digest != md5[name]:
            failures.append("{}: MD5 {} of its content does not match {}".format(url, digest, md5[name]))
            continue
        atomic_write(target, lambda out, payload=payload: out.write(payload))
        return target
    raise DataError(
        "Could not download {}.gz:\n  {}".format(name, "\n  ".join(failures))
    )


def read_idx(path):
    """Read an IDX file (.gz or not) into a numpy array, checking its structure on the way."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            payload = f.read()
        magic = struct.unpack(">I", payload[:4])[0]
        ndim = IDX_MAGIC[magic]
        shape = struct.unpack(">" + "I" * ndim, payload[4 : 4 + 4 * ndim])
        body = np.frombuffer(payload, dtype=np.uint8, offset=4 + 4 * ndim)
        return body.reshape(shape)
    except (OSError, EOFError, KeyError, ValueError, struct.error, gzip.BadGzipFile) as error:
        raise DataError("{} is not a valid MNIST IDX file ({}).".format(path, error or type(error).__name__)) from None


def _find_local(raw_dir, name):
    for candidate in (name + ".gz", name):
        path = os.path.join(raw_dir, candidate)
        if os.path.exists(path):
            return path
    return None


def _load_split(images_path, labels_path):
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError("{} holds images of shape {}, not 28x28.".format(images_path, images.shape[1:]))
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError("{} has {} labels for {} images.".format(labels_path, len(labels), len(images)))
    if len(labels) and labels.max() > 9:
        raise DataError("{} has a label {}, outside 0-9.".format(labels_path, labels.max()))
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def ensure(root, mirrors=None, md5=RAW_MD5):
    """Make `root` ready for `torchvision.datasets.MNIST(root, download=False)` of torchvision 0.5.0.

    Raises DataError with a message that names the folder and says how to fill it.
    """
    paths = ensure_raw(root, mirrors, md5)
    newest_raw = max(os.path.getmtime(p) for p in paths.values())
    for processed, (images_name, labels_name) in SPLITS.items():
        out = os.path.join(root, "MNIST", "processed", processed)
        if os.path.exists(out) and os.path.getmtime(out) >= newest_raw:
            continue
        split = _with_advice(root, _load_split, paths[images_name], paths[labels_name])
        atomic_write(out, lambda f, split=split: torch.save(split, f))


def ensure_raw(root, mirrors=None, md5=RAW_MD5):
    """The four raw files in `root`/MNIST/raw, found or downloaded; returns their paths by name.

    This is all that load() needs, in any environment: the Flower twin (torch 2.x)
    writes no processed/*.pt, which torch 1.4 could not read back.
    """
    raw_dir = os.path.join(root, "MNIST", "raw")
    mirrors = mirrors or configured_mirrors()
    return _with_advice(root, lambda: {name: _find_local(raw_dir, name) or download(name, raw_dir, mirrors, md5)
                                       for name in RAW_MD5})


def _with_advice(root, step, *args):
    """step(*args); a DataError gets the folder and what to put there added to its message."""
    try:
        return step(*args)
    except DataError as error:
        raise DataError(
            "{}\n\nMNIST in {} is missing or damaged. Put the four files {} there "
            "(copied from any machine that has them), or remove the damaged ones and "
            "run again with network access.".format(
                error, os.path.abspath(os.path.join(root, "MNIST", "raw")), ", ".join(n + ".gz" for n in RAW_MD5)
            )
        ) from None


def train_labels(root):
    """The training set's labels, from the labels file alone (60 KB; after ensure(root)): enough to plan the split."""
    return read_idx(_find_local(os.path.join(root, "MNIST", "raw"), "train-labels-idx1-ubyte"))


def normalized(data_dir, train=True):
    """(images, labels) with TRANSFORM applied to all images at once: the very same floats,

    bit for bit, as torchvision's per-image ToTensor + Normalize, in a fraction of the time.
    """
    dataset = datasets.MNIST(data_dir, train=train)
    return normalize(dataset.data), dataset.targets


def load(root, train=True, mirrors=None, md5=RAW_MD5):
    """normalized(), read from the raw files alone (found or downloaded): no torchvision dataset, any torch."""
    paths = ensure_raw(root, mirrors, md5)
    images_name, labels_name = SPLITS["training.pt" if train else "test.pt"]
    images, labels = _with_advice(root, _load_split, paths[images_name], paths[labels_name])
    return normalize(images), labels


def normalize(images):
    """uint8 images (N, 28, 28) -> float (N, 1, 28, 28), normalised as TRANSFORM does."""
    (mean,), (std,) = TRANSFORM.transforms[1].mean, TRANSFORM.transforms[1].std
    return images.unsqueeze(1).float().div_(255).sub_(mean).div_(std)  # in place: 4x faster
