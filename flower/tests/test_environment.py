"""The twin's environment: every package pinned with ==, the app's dependencies agreeing with the lock file."""
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata

from twin_helpers import ROOT

LOCK = os.path.join(ROOT, "flower", "requirements.txt")
PIN = re.compile(r'^([A-Za-z0-9_.\-]+)(\[[a-z,]+\])?==([A-Za-z0-9_.+\-]+)(; platform_system == "Linux")?$')


def name(text):
    return text.lower().replace("_", "-")


def lock():
    pins = {}
    with open(LOCK) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                match = PIN.match(line)
                assert match, "not pinned with ==: " + line
                pins[name(match.group(1))] = match.group(3)
    return pins


def pyproject():
    with open(os.path.join(ROOT, "flower", "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_every_package_of_the_lock_file_is_pinned_exactly():
    pins = lock()
    assert len(pins) > 80
    assert pins["flwr"] == "1.42.0"


def test_the_apps_dependencies_are_the_lock_files_pins():
    pins = lock()
    for requirement in pyproject()["project"]["dependencies"]:
        match = PIN.match(requirement)
        assert match, "not pinned with ==: " + requirement
        assert pins[name(match.group(1))] == match.group(3), requirement
    build = pyproject()["build-system"]["requires"]
    assert all(PIN.match(r) and pins[name(PIN.match(r).group(1))] == PIN.match(r).group(3) for r in build)


def test_the_extras_the_app_uses_are_locked_too():
    # flwr[simulation] brings Ray: its pin is Flower's own.
    requires = metadata.requires("flwr")
    ray = [r for r in requires if r.startswith("ray") and "simulation" in r]
    assert ray and "==" + lock()["ray"] in ray[0].replace(" ", "")


def test_this_environment_is_the_lock_file():
    installed = {name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    for package, version in lock().items():
        if package.startswith(("nvidia-", "cuda-", "triton")) and not sys.platform.startswith("linux"):
            continue
        assert installed.get(package) == version, package
    assert sys.version_info >= (3, 11)


def test_the_twin_holds_only_the_tutorials_syft_free_core(tmp_path):
    # A fresh interpreter of .venv-flower, isolated from this project's folder and PYTHONPATH: what Flower's
    # processes import. The core is there; syft's layers, which need Python 3.8 and torch 1.4, are not.
    code = ("import importlib.util as u, sys; "
            "print(u.find_spec('fl_tutorial.core.model').origin); "
            "print([p for p in ('pysyft', 'privacy', 'remote', 'experiment', 'worker') "
            "if u.find_spec('fl_tutorial.' + p)])")
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=str(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    core, others = done.stdout.splitlines()
    assert core.endswith(os.path.join("fl_tutorial", "core", "model.py")) and others == "[]"
