"""The coursework environment: PySyft 0.2.6's own course runs in it unmodified.

Every Python process of the environment (not only this project's scripts) can
`import syft`, run `sy.create_sandbox`, and use torchvision's own
`datasets.MNIST(root, download=True)`, which the start-up hook routes to the
verified mirrors. Fresh interpreters run in a folder outside the project, as a
course notebook would.
"""
import gzip
import os
import subprocess
import sys
import textwrap

import pytest
import torchvision.datasets.mnist as tv_mnist
from torchvision import datasets

from fl_tutorial.core import mnist
from fl_tutorial.pysyft import startup
from helpers import NAMES, ROOT, Mirror, corrupt, write_mnist

pytestmark = pytest.mark.slow  # make test-all: fresh interpreters of the environment


def fresh_python(code, cwd, env=None, timeout=300):
    """Run `code` in a new interpreter of this environment, outside the project folder."""
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("PYTHONPATH", None)  # nothing of the project on the path: only what is installed
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=str(cwd), env=full_env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=timeout)


def test_plain_import_syft_works_anywhere_and_trains_a_virtual_worker_step(tmp_path):
    # The course's first cell, with no helper: the start-up hook supplies the aiortc stand-in.
    # Also proves syft never imports tornado, which is pinned to 6.x for Jupyter.
    result = fresh_python("""
        import sys
        import syft as sy
        import torch
        assert "tornado" not in sys.modules, "syft imported tornado"
        assert sys.modules["aiortc"].fl_tutorial_placeholder
        hook = sy.TorchHook(torch)
        bob = sy.VirtualWorker(hook, id="bob")
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        before = model.weight.detach().clone()
        data = torch.randn(8, 3).send(bob)
        target = torch.randn(8, 1).send(bob)
        model.send(bob)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        optimizer.zero_grad()
        loss = ((model(data) - target) ** 2).mean()
        loss.backward()
        optimizer.step()
        model.get()
        assert not torch.equal(before, model.weight.data)
        import tornado
        print("ok", tornado.version, sys.modules["fl_tutorial"].__file__)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    ok, tornado_version, fl_tutorial_file = result.stdout.split()
    assert ok == "ok" and tornado_version.startswith("6.")
    assert not fl_tutorial_file.startswith(os.path.join(ROOT, "fl_tutorial"))  # the installed copy


def test_a_real_aiortc_is_found_before_the_stand_in(tmp_path):
    real = tmp_path / "site" / "aiortc"
    real.mkdir(parents=True)
    (real / "__init__.py").write_text("REAL = True\n")
    result = fresh_python("""
        import sys
        sys.path.insert(0, {!r})
        import aiortc
        assert aiortc.REAL and not hasattr(aiortc, "fl_tutorial_placeholder")
    """.format(str(tmp_path / "site")), tmp_path)
    assert result.returncode == 0, result.stderr


def test_the_stand_in_explains_itself_in_a_fresh_interpreter(tmp_path):
    result = fresh_python("""
        from aiortc.contrib.signaling import CopyAndPasteSignaling
        CopyAndPasteSignaling()
    """, tmp_path)
    assert result.returncode == 1
    assert "RuntimeError" in result.stderr and "VirtualWorkers do not need them" in result.stderr


def test_create_sandbox_runs(tmp_path):
    # Parts 05 and 07 call it; it needs scikit-learn's load_boston (gone in scikit-learn 1.2).
    result = fresh_python("""
        import syft as sy
        import torch
        sy.create_sandbox(globals(), verbose=False)
        print(",".join(sorted(w.id for w in workers)), len(grid.search("#boston", "#data")))
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    ids, found = result.stdout.splitlines()[-1].split()
    assert ids == "alice,andy,bob,jason,jon,theo" and int(found) > 0


@pytest.fixture
def served(gz_files, monkeypatch):
    """A mirror on 127.0.0.1 serving the generated files, and their checksums in place of the real ones."""
    payloads, md5 = gz_files
    server = Mirror()
    for name in NAMES:
        server.files["/good/{}.gz".format(name)] = (payloads[name], "ok")
        server.files["/bad/{}.gz".format(name)] = (gzip.compress(corrupt(gzip.decompress(payloads[name]))), "ok")
    for name in NAMES:
        monkeypatch.setitem(mnist.RAW_MD5, name, md5[name])
    yield server
    server.close()


def test_the_hook_is_active_in_this_environment():
    assert hasattr(datasets.MNIST.download, "torchvision_download"), \
        "the start-up hook did not patch torchvision: is fl-tutorial installed (`make venv`)?"


def test_torchvision_download_uses_the_mirror(served, tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_MIRRORS", served.url("good"))
    train = datasets.MNIST(str(tmp_path), train=True, download=True)  # the course's own call
    test = datasets.MNIST(str(tmp_path), train=False, download=True)
    assert (len(train), len(test)) == (640, 200)
    assert sorted(served.requests) == sorted("/good/{}.gz".format(n) for n in NAMES)


def test_torchvision_download_rejects_a_corrupted_mirror(served, tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_MIRRORS", served.url("bad"))
    with pytest.raises(mnist.DataError, match="of its content does not match"):
        datasets.MNIST(str(tmp_path), train=True, download=True)
    raw = tmp_path / "MNIST" / "raw"
    assert not raw.exists() or os.listdir(str(raw)) == []
    assert not (tmp_path / "MNIST" / "processed" / "training.pt").exists()


def test_files_put_in_place_are_used_offline_by_a_fresh_interpreter(tmp_path):
    data = write_mnist(tmp_path / "data")
    result = fresh_python("""
        from torchvision import datasets
        print(len(datasets.MNIST({0!r}, train=True, download=True)),
              len(datasets.MNIST({0!r}, train=False, download=True)))
    """.format(data), tmp_path, env={"MNIST_MIRRORS": "http://127.0.0.1:9/never-used/"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["640", "200"]
    assert "Downloading" not in result.stdout


class TorchvisionDownloadCalled(Exception):
    pass


@pytest.fixture
def torchvision_urls(monkeypatch):
    """The URLs torchvision's own download would fetch; it is stopped at the first."""
    calls = []

    def download_and_extract_archive(url, **kwargs):
        calls.append(url)
        raise TorchvisionDownloadCalled(url)

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", download_and_extract_archive)
    return calls


def test_the_switch_gives_back_torchvisions_own_download(tmp_path, monkeypatch, torchvision_urls):
    monkeypatch.setenv(startup.SWITCH, "0")
    with pytest.raises(TorchvisionDownloadCalled):
        datasets.MNIST(str(tmp_path), train=True, download=True)
    assert "yann.lecun.com" in torchvision_urls[0]


def test_subclasses_keep_their_own_download(tmp_path, torchvision_urls):
    with pytest.raises(TorchvisionDownloadCalled):
        datasets.FashionMNIST(str(tmp_path), train=True, download=True)
    assert "fashion" in torchvision_urls[0].lower()


def test_pip_check_names_only_the_known_departures():
    # The pins are complete and consistent: pip finds nothing missing but aiortc, and
    # nothing at another version than declared but tornado (docs/installing.md, "Jupyter")
    # and what dp-accounting 0.3.0 declares (requirements.txt says why; its own tests pass in
    # tests/test_privacy.py).
    result = subprocess.run([sys.executable, "-m", "pip", "check"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True, cwd=ROOT)
    assert sorted(result.stdout.splitlines()) == [
        "dp-accounting 0.3.0 has requirement attrs~=21.4.0, but you have attrs 25.3.0.",
        "dp-accounting 0.3.0 has requirement numpy~=1.21, but you have numpy 1.18.5.",
        "dp-accounting 0.3.0 has requirement scipy~=1.7.1, but you have scipy 1.4.1.",
        "syft 0.2.6 has requirement tornado==4.5.3, but you have tornado 6.4.2.",
        "syft 0.2.6 requires aiortc, which is not installed.",
    ]


def test_jupyter_and_papermill_are_in_the_environment():
    bin_dir = os.path.dirname(sys.executable)
    for tool in ("jupyter-notebook", "papermill"):
        result = subprocess.run([os.path.join(bin_dir, tool), "--version"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, universal_newlines=True)
        assert result.returncode == 0, result.stdout
    from jupyter_client.kernelspec import KernelSpecManager

    assert "python3" in KernelSpecManager().find_kernel_specs()
