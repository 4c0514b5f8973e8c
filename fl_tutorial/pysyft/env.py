"""Make sure this interpreter holds the PySyft 0.2.x stack, then import syft.

The tutorial only runs on CPython 3.8 with torch 1.4.0, torchvision 0.5.0 and
syft 0.2.6. Anything else fails deep inside syft or torch with a traceback that
does not name the cause, so we check first and print one message instead.

This module must stay importable on any Python 3, because its whole job is to
explain a wrong interpreter: keep it free of torch/syft imports at top level.
"""
import atexit
import gc
import sys
import types
import warnings

REQUIRED_PYTHON = (3, 8)
REQUIRED = {"torch": "1.4.0", "torchvision": "0.5.0", "syft": "0.2.6"}

FIX = (
    "To fix it, from the project folder run `make run`: it builds .venv with CPython 3.8\n"
    "and the pinned packages (`make clean run` rebuilds a damaged one). Or follow the\n"
    "conda route in docs/installing.md. In a Python 3.8 environment of your own:\n"
    "    python -m pip install --no-deps -r requirements.txt && python -m pip install --no-deps ."
)


class StackError(SystemExit):
    """A wrong environment; SystemExit so that it ends the run without a traceback."""

    def __init__(self, problems):
        lines = ["This tutorial needs the PySyft 0.2.x stack, but this environment differs:"]
        lines += ["  - " + p for p in problems]
        self.message = "\n".join(lines + ["", FIX])
        super().__init__(self.message)


def installed_version(dist):
    """Version of an installed distribution without importing it (syft 0.2.6 has no __version__)."""
    try:
        from importlib import metadata
    except ImportError:  # Python < 3.8: still report, never crash
        try:
            import pkg_resources

            return pkg_resources.get_distribution(dist).version
        except Exception:
            return None
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _release(version):
    """'1.4.0+cpu' -> '1.4.0': local build tags (PyTorch's own wheel index) do not matter."""
    return version.split("+", 1)[0]


def diagnose(python_version, versions):
    """The list of problems (empty when the stack is right), one readable sentence each."""
    problems = []
    if tuple(python_version[:2]) != REQUIRED_PYTHON:
        problems.append(
            "Python {} is running; Python 3.8 is needed (torch 1.4.0 and syft 0.2.6 "
            "publish nothing newer).".format(".".join(map(str, python_version[:3])))
        )
    for dist, needed in REQUIRED.items():
        found = versions.get(dist)
        if found is None:
            problems.append("{} is not installed; {} {} is needed.".format(dist, dist, needed))
        elif dist == "syft" and not found.startswith("0.2."):
            problems.append(
                "syft {} is installed, but this tutorial uses the PySyft 0.2 API "
                "(sy.TorchHook, sy.VirtualWorker), which syft dropped in 0.3; syft {} is "
                "needed. A plain `pip install syft` now brings the new syft.".format(found, needed)
            )
        elif _release(found) != needed:
            problems.append("{} {} is installed; {} {} is needed.".format(dist, found, dist, needed))
    return problems


def check_stack():
    """Raise StackError (exit status 1, no traceback) unless the stack is the pinned one."""
    versions = {dist: installed_version(dist) for dist in REQUIRED}
    problems = diagnose(sys.version_info, versions)
    if problems:
        raise StackError(problems)


class _WebRTCUnavailable:
    """Placeholder for aiortc's classes: syft imports them at start-up, VirtualWorkers never use them."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(
            "syft's WebRTC grid networking needs aiortc 0.9.28 and PyAV 8, which this "
            "environment leaves out (PyAV 8 does not build against FFmpeg 5+). "
            "VirtualWorkers do not need them; see 'WebRTC' in docs/installing.md."
        )


def _webrtc_unavailable(*args, **kwargs):
    _WebRTCUnavailable()


_PLACEHOLDER = {}


def aiortc_placeholder():
    """The stand-in modules aiortc, aiortc.contrib and aiortc.contrib.signaling (made once)."""
    if not _PLACEHOLDER:
        aiortc = types.ModuleType("aiortc")
        contrib = types.ModuleType("aiortc.contrib")
        signaling = types.ModuleType("aiortc.contrib.signaling")
        aiortc.RTCPeerConnection = aiortc.RTCSessionDescription = _WebRTCUnavailable
        signaling.CopyAndPasteSignaling = _WebRTCUnavailable
        signaling.object_to_string = signaling.object_from_string = _webrtc_unavailable
        aiortc.contrib, contrib.signaling = contrib, signaling
        aiortc.fl_tutorial_placeholder = True
        _PLACEHOLDER.update(
            {"aiortc": aiortc, "aiortc.contrib": contrib, "aiortc.contrib.signaling": signaling}
        )
    return _PLACEHOLDER


def provide_aiortc_placeholder():
    """Let `import syft` succeed without aiortc; the real aiortc is used whenever it imports.

    In the course environment the start-up hook (startup.py) already
    supplies the stand-in; this covers a plain `pip install -r requirements.txt`.
    """
    try:
        import aiortc  # noqa: F401  (present, with a working PyAV: nothing to do)
        return False
    except ImportError:
        pass
    sys.modules.update(aiortc_placeholder())
    return True


def disarm_pointers():
    """Tell every syft pointer in this process to leave its remote object alone when it is deleted.

    A syft 0.2.6 pointer deletes its remote object in __del__. Once Python is
    shutting down, or once the clients are gone, that fails with a printed
    traceback. VirtualWorkers vanish with this process; websocket clients free
    their objects when the coordinator disconnects.
    """
    from syft.generic.pointers.object_pointer import ObjectPointer

    with warnings.catch_warnings():  # isinstance() touches torch's deprecated reduce_op
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():  # garbage not yet collected included
            if isinstance(obj, ObjectPointer):
                obj.garbage_collect_data = False
    gc.collect()


def _import_failure(error):
    """One sentence for a syft that is installed but fails to import."""
    missing = getattr(error, "name", None) if isinstance(error, ImportError) else None
    if missing:
        return ("syft 0.2.6 is installed but cannot be imported: the module {!r} it needs "
                "is missing or broken ({}: {}).".format(missing, type(error).__name__, error))
    return "syft 0.2.6 is installed but cannot be imported ({}: {}).".format(type(error).__name__, error)


_GUARDED = {}  # syft, once import_syft() has checked it and installed the wire's checks


def import_syft():
    """Check the stack, then return the real, unmodified syft 0.2.6 module (checked and guarded once a process).

    Importing torch and syft takes seconds: a Ctrl-C meanwhile ends the program with
    "Interrupted.", not with a traceback. Called by a program's own script (its
    __main__, as federated_learning.py calls it), it also makes every later Ctrl-C end
    the program so, the rest of its imports included (pysyft/exits.py).
    """
    if "syft" in _GUARDED:
        return _GUARDED["syft"]
    check_stack()
    provide_aiortc_placeholder()
    program = sys._getframe(1).f_globals.get("__name__") == "__main__"
    try:
        try:
            import syft
        except Exception as error:  # a dependency missing or broken: name it, no traceback
            raise StackError([_import_failure(error)]) from None
        if not hasattr(syft, "TorchHook"):  # e.g. a syft 0.3+ source tree on sys.path
            raise StackError(["the imported syft ({}) has no TorchHook; syft 0.2.6 is needed.".format(syft.__file__)])
        atexit.register(disarm_pointers)  # a quiet exit: no pointer tracebacks at shutdown
        # Here, not at the top: they import torch, and this module must stay importable without it.
        from fl_tutorial.pysyft import exits, wire

        wire.install(syft)  # no code on the wire: see wire.py
        if program:
            exits.catch_interrupts()
    except KeyboardInterrupt:
        raise SystemExit("Interrupted.") from None
    _GUARDED["syft"] = syft
    return syft


def pick_device(choice):
    """'auto' takes the GPU only if this torch 1.4 (CUDA 10.1) build can really run on it.

    torch 1.4 predates recent GPU generations: `cuda.is_available()` can be True
    while every kernel fails, so we try one small operation first.
    """
    import torch

    if choice == "cpu":
        return torch.device("cpu")
    reason = "torch.cuda.is_available() is False"
    if torch.cuda.is_available():
        try:
            torch.ones(1, device="cuda").add_(1).cpu()
            return torch.device("cuda")
        except RuntimeError as error:
            reason = str(error).splitlines()[0]
    if choice == "cuda":
        raise SystemExit("error: --device cuda, but torch {} cannot use the GPU here ({}). "
                         "Use --device cpu.".format(torch.__version__, reason))
    return torch.device("cpu")
