"""The environment guard: a wrong stack gets one clear message and exit status 1, never a traceback."""
import os
import shutil
import subprocess
import sys

import pytest

from fl_tutorial.pysyft import env
from helpers import SCRIPT, assert_clean_exit, run_script

RIGHT = {"torch": "1.4.0", "torchvision": "0.5.0", "syft": "0.2.6"}


def test_the_pinned_stack_passes():
    assert env.diagnose((3, 8, 18), RIGHT) == []
    assert env.diagnose((3, 8, 0), dict(RIGHT, torch="1.4.0+cpu")) == []  # PyTorch's own wheel index


@pytest.mark.parametrize("python, versions, expected", [
    ((3, 11, 7), RIGHT, "Python 3.11.7 is running; Python 3.8 is needed"),
    ((3, 8, 18), dict(RIGHT, syft=None), "syft is not installed; syft 0.2.6 is needed"),
    ((3, 8, 18), dict(RIGHT, syft="0.10.0"), "syft 0.10.0 is installed, but this tutorial uses the PySyft 0.2 API"),
    ((3, 8, 18), dict(RIGHT, torch="2.1.0"), "torch 2.1.0 is installed; torch 1.4.0 is needed"),
    ((3, 8, 18), dict(RIGHT, torch=None), "torch is not installed; torch 1.4.0 is needed"),
    ((3, 8, 18), dict(RIGHT, torchvision="0.6.0"), "torchvision 0.6.0 is installed; torchvision 0.5.0 is needed"),
])
def test_each_wrong_piece_is_named(python, versions, expected):
    problems = env.diagnose(python, versions)
    assert len(problems) == 1 and expected in problems[0]


def test_message_says_what_fixes_it():
    message = env.StackError(["x"]).message
    assert "make run" in message and "pip install --no-deps -r requirements.txt" in message


def test_syft_010_on_the_path_is_refused_before_import(tmp_path):
    # What `pip install syft` brings today: a syft without TorchHook.
    (tmp_path / "syft").mkdir()
    (tmp_path / "syft" / "__init__.py").write_text("raise ImportError('the guard must not import me')\n")
    info = tmp_path / "syft-0.10.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: syft\nVersion: 0.10.0\n")
    result = run_script("--epochs", "1", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1
    assert "syft 0.10.0 is installed" in result.stderr and "TorchHook" in result.stderr
    assert "pip install --no-deps -r requirements.txt" in result.stderr
    assert_clean_exit(result)


def test_no_packages_at_all():
    result = subprocess.run([sys.executable, "-S", SCRIPT],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert result.returncode == 1
    for dist in ("torch", "torchvision", "syft"):
        assert "{} is not installed".format(dist) in result.stderr
    assert_clean_exit(result)


def other_python():
    for name in ("python3", "python3.11", "python3.12", "python3.10", "python3.9"):
        path = shutil.which(name)
        if path and os.path.realpath(path) != os.path.realpath(sys.executable):
            ok = subprocess.run([path, "-c", "import sys; sys.exit(sys.version_info[:2] == (3, 8))"])
            if ok.returncode == 0:
                return path
    return None


@pytest.mark.skipif(other_python() is None, reason="no Python other than 3.8 on PATH")
def test_wrong_python_gets_the_message_not_a_traceback():
    result = run_script("--epochs", "1", python=other_python(), env={"PYTHONPATH": ""})
    assert result.returncode == 1
    assert "Python 3.8 is needed" in result.stderr
    assert_clean_exit(result)


def test_webrtc_placeholder_explains_itself(sy):
    import aiortc
    from syft.grid import webrtc_connection  # the real syft module, importing the placeholder

    assert webrtc_connection.RTCPeerConnection is aiortc.RTCPeerConnection
    with pytest.raises(RuntimeError, match="VirtualWorkers do not need them"):
        aiortc.RTCPeerConnection()


def test_a_syft_that_fails_to_import_gets_the_message(tmp_path):
    # syft installed, one of its dependencies (phe) broken: name it, no traceback.
    (tmp_path / "phe").mkdir()
    (tmp_path / "phe" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'phe.paillier'\", name='phe.paillier')\n")
    result = run_script("--epochs", "1", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1
    assert "syft 0.2.6 is installed but cannot be imported" in result.stderr
    assert "'phe.paillier'" in result.stderr and "make clean run" in result.stderr
    assert_clean_exit(result)
