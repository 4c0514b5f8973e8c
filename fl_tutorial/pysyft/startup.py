"""Start-up hook of the course environment: plain `import syft` and torchvision's MNIST download work.

PySyft 0.2.6's own course notebooks begin with `import syft as sy` and call
`datasets.MNIST('../data', download=True)`. Unaided, neither works here: syft
imports aiortc, which this environment leaves out (docs/installing.md, "WebRTC"), and
torchvision 0.5.0 downloads from a server that no longer has MNIST. This hook
fixes both for every Python process of the environment, without changing syft,
torchvision or the notebooks, and costs nothing until those modules are imported:

- aiortc: a finder placed *last* in `sys.meta_path` supplies the stand-in of
  `fl_tutorial.pysyft.env`, so a real aiortc, once installed, is always found first.
- torchvision.datasets.mnist: right after torchvision loads it, `MNIST.download`
  is replaced by `fl_tutorial.core.mnist.ensure`: files already in `root/MNIST/raw`
  are used offline, missing ones come from the verified mirrors (or
  `MNIST_MIRRORS`), checked and written atomically. Subclasses such as
  FashionMNIST keep torchvision's own download. `FL_TUTORIAL_MNIST_HOOK=0`
  turns the replacement off.

`pip install .` copies this file to the top-level module `fl_tutorial_startup`
and adds `fl_tutorial_startup.pth`, which calls `install()` when Python starts.
It is top-level so that start-up never binds the name `fl_tutorial` before a
script's own folder is on `sys.path`: the project's scripts keep using their own copy.
"""
import importlib.abc
import importlib.util
import os
import sys

AIORTC_MODULES = ("aiortc", "aiortc.contrib", "aiortc.contrib.signaling")
MNIST_MODULE = "torchvision.datasets.mnist"
SWITCH = "FL_TUTORIAL_MNIST_HOOK"


class AiortcFallback(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """The last finder: it answers for aiortc only when no other finder has found it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in AIORTC_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=fullname != AIORTC_MODULES[-1])

    def create_module(self, spec):
        from fl_tutorial.pysyft.env import aiortc_placeholder  # only now: see the module's text

        return aiortc_placeholder()[spec.name]

    def exec_module(self, module):
        pass  # the stand-in module is complete as created


class _PatchAfterLoading(importlib.abc.Loader):
    """Wraps a module's real loader and calls `patch(module)` once the module has run."""

    def __init__(self, loader, patch):
        self.loader, self.patch = loader, patch

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        self.patch(module)

    def __getattr__(self, name):  # get_source, get_code, ...: the real loader's
        return getattr(self.loader, name)


class MnistDownloadHook(importlib.abc.MetaPathFinder):
    """The first finder: lets the other finders locate torchvision's mnist module, then patches it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != MNIST_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchAfterLoading(spec.loader, patch_mnist)
                return spec
        return None


def patch_mnist(module):
    """Replace torchvision 0.5.0's `MNIST.download` (dead URL) with the project's verified one."""
    mnist_class = module.MNIST
    torchvision_download = mnist_class.download

    def download(self):
        if type(self) is not mnist_class or os.environ.get(SWITCH, "1") == "0":
            return torchvision_download(self)
        if self._check_exists():
            return None
        from fl_tutorial.core import mnist  # only now: see the module's text

        mnist.ensure(self.root)
        return None

    download.__doc__ = ("MNIST from local files or verified mirrors (fl_tutorial.core.mnist.ensure); "
                        "see fl_tutorial/pysyft/startup.py.")
    download.torchvision_download = torchvision_download
    mnist_class.download = download


def install():
    """Register both finders once; called from the .pth file at every interpreter start."""
    if not any(isinstance(f, AiortcFallback) for f in sys.meta_path):
        sys.meta_path.append(AiortcFallback())
    if not any(isinstance(f, MnistDownloadHook) for f in sys.meta_path):
        sys.meta_path.insert(0, MnistDownloadHook())
        loaded = sys.modules.get(MNIST_MODULE)
        if loaded is not None and not hasattr(loaded.MNIST.download, "torchvision_download"):
            patch_mnist(loaded)
