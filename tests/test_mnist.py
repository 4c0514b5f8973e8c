"""MNIST files: verified, atomic downloads from a local server; offline use; clear errors."""
import glob
import gzip
import os
import shutil

import pytest
import torch
from torchvision import datasets

from fl_tutorial.core import mnist
from helpers import NAMES, assert_clean_exit, corrupt, run_script


def copy_raw(data_dir, tmp_path):
    """A fresh data folder holding only the raw files (no processed/ from earlier tests)."""
    root = tmp_path / "data"
    shutil.copytree(os.path.join(data_dir, "MNIST", "raw"), str(root / "MNIST" / "raw"))
    return root


def leftovers(folder):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(str(folder), "*")))


def test_download_skips_a_corrupt_mirror_and_keeps_the_verified_file(mirror, gz_files, tmp_path):
    payloads, md5 = gz_files
    name = NAMES[0]
    mirror.files["/bad/{}.gz".format(name)] = (corrupt(payloads[name]), "ok")
    mirror.files["/good/{}.gz".format(name)] = (payloads[name], "ok")
    path = mnist.download(name, str(tmp_path), [mirror.url("bad"), mirror.url("good")], md5)
    assert open(path, "rb").read() == payloads[name]
    assert mirror.requests == ["/bad/{}.gz".format(name), "/good/{}.gz".format(name)]
    assert leftovers(tmp_path) == [name + ".gz"]


def test_corrupt_download_is_rejected_and_not_kept(mirror, gz_files, tmp_path):
    payloads, md5 = gz_files
    name = NAMES[1]
    mirror.files["/bad/{}.gz".format(name)] = (gzip.compress(corrupt(gzip.decompress(payloads[name]))), "ok")
    with pytest.raises(mnist.DataError, match="MD5 [0-9a-f]{32} of its content does not match " + md5[name]):
        mnist.download(name, str(tmp_path), [mirror.url("bad")], md5)
    assert leftovers(tmp_path) == []


def test_a_download_that_is_not_gzip_is_rejected(mirror, gz_files, tmp_path):
    payloads, md5 = gz_files
    name = NAMES[2]
    mirror.files["/bad/{}.gz".format(name)] = (corrupt(payloads[name]), "ok")
    mirror.files["/html/{}.gz".format(name)] = (b"<html>Moved</html>", "ok")
    with pytest.raises(mnist.DataError, match="not a valid .gz file") as error:
        mnist.download(name, str(tmp_path), [mirror.url("bad"), mirror.url("html")], md5)
    assert str(error.value).count("not a valid .gz file") == 2
    assert leftovers(tmp_path) == []


def test_a_mirror_may_recompress_the_files(mirror, gz_files, tmp_path):
    # The content is what is verified, so a classroom server's re-compressed copy passes.
    payloads, md5 = gz_files
    name = NAMES[3]
    recompressed = gzip.compress(gzip.decompress(payloads[name]), compresslevel=1)
    assert recompressed != payloads[name]
    mirror.files["/class/{}.gz".format(name)] = (recompressed, "ok")
    path = mnist.download(name, str(tmp_path), [mirror.url("class")], md5)
    assert open(path, "rb").read() == recompressed


def test_interrupted_download_leaves_no_file_that_passes_as_complete(mirror, gz_files, tmp_path):
    payloads, md5 = gz_files
    name = NAMES[0]
    mirror.files["/cut/{}.gz".format(name)] = (payloads[name], "truncate")
    with pytest.raises(mnist.DataError, match="Could not download"):
        mnist.download(name, str(tmp_path), [mirror.url("cut")], md5)
    assert leftovers(tmp_path) == []


def test_ensure_downloads_what_is_missing_then_torchvision_loads_it(mirror, gz_files, tmp_path):
    payloads, md5 = gz_files
    for name, payload in payloads.items():
        mirror.files["/m/{}.gz".format(name)] = (payload, "ok")
    mnist.ensure(str(tmp_path), [mirror.url("m")], md5)
    assert len(datasets.MNIST(str(tmp_path), train=True)) == 640
    assert len(datasets.MNIST(str(tmp_path), train=False)) == 200
    assert leftovers(tmp_path / "MNIST" / "raw") == sorted(n + ".gz" for n in NAMES)


def test_local_files_work_offline_even_if_recompressed(mnist_dir, tmp_path):
    # Re-compressing changes the .gz MD5 but not the content: still accepted, no download tried.
    root = copy_raw(mnist_dir, tmp_path)
    for path in glob.glob(str(root / "MNIST" / "raw" / "*.gz")):
        content = gzip.open(path).read()
        with gzip.open(path, "wb", compresslevel=1) as f:
            f.write(content)
    mnist.ensure(str(root), mirrors=["http://127.0.0.1:9/never-used/"])
    image, label = datasets.MNIST(str(root), train=True, transform=mnist.TRANSFORM)[0]
    assert tuple(image.shape) == (1, 28, 28) and 0 <= int(label) <= 9


def test_uncompressed_local_files_work_too(mnist_dir, tmp_path):
    root = copy_raw(mnist_dir, tmp_path)
    for path in glob.glob(str(root / "MNIST" / "raw" / "*.gz")):
        open(path[:-3], "wb").write(gzip.open(path).read())
        os.remove(path)
    mnist.ensure(str(root), mirrors=["http://127.0.0.1:9/never-used/"])
    assert len(datasets.MNIST(str(root), train=False)) == 200


@pytest.mark.parametrize("damage", ["truncate", "not-idx", "labels-mismatch"])
def test_damaged_local_file_gives_a_clear_error(mnist_dir, tmp_path, damage):
    root = copy_raw(mnist_dir, tmp_path)
    raw = root / "MNIST" / "raw"
    images = raw / "train-images-idx3-ubyte.gz"
    if damage == "truncate":
        images.write_bytes(images.read_bytes()[:500])
    elif damage == "not-idx":
        images.write_bytes(gzip.compress(b"<html>Not Found</html>"))
    else:
        shutil.copy(str(raw / "t10k-labels-idx1-ubyte.gz"), str(raw / "train-labels-idx1-ubyte.gz"))
    with pytest.raises(mnist.DataError) as error:
        mnist.ensure(str(root), mirrors=["http://127.0.0.1:9/never-used/"])
    assert "MNIST in {} is missing or damaged".format(raw) in str(error.value)
    assert not (root / "MNIST" / "processed" / "training.pt").exists()


@pytest.mark.slow
def test_script_without_data_and_without_network_explains_what_to_do(mirror, tmp_path):
    result = run_script("--data-dir", str(tmp_path), env={"MNIST_MIRRORS": mirror.url("empty")})
    assert result.returncode == 1
    raw = os.path.join(str(tmp_path), "MNIST", "raw")
    assert "error: Could not download train-images-idx3-ubyte.gz" in result.stderr
    assert "404" in result.stderr
    assert "MNIST in {} is missing or damaged. Put the four files".format(raw) in result.stderr
    assert_clean_exit(result)


def test_bulk_normalisation_is_bit_identical_to_torchvision_per_image(mnist_dir):
    mnist.ensure(mnist_dir)
    images, labels = mnist.normalized(mnist_dir)
    per_image = datasets.MNIST(mnist_dir, train=True, transform=mnist.TRANSFORM)
    assert images.shape == (640, 1, 28, 28)
    for i in range(len(per_image)):
        image, label = per_image[i]
        assert torch.equal(images[i], image) and int(labels[i]) == label
