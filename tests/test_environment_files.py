"""requirements.txt and environment.yml pin the same packages to the same versions."""
import os
import re

from helpers import ROOT

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)$")


def pins(lines):
    found = {}
    for line in lines:
        line = line.split("#", 1)[0].strip().lstrip("- ").strip()
        match = PIN.match(line)
        if match:
            found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found


def read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read().splitlines()


def pip_section(lines):
    """The entries under `- pip:` in environment.yml."""
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    indent = len(lines[start]) - len(lines[start].lstrip())
    section = []
    for line in lines[start + 1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        section.append(line)
    return section


def test_every_requirement_is_pinned_exactly():
    for line in read("requirements.txt"):
        line = line.split("#", 1)[0].strip()
        assert not line or PIN.match(line), "not pinned with ==: " + line


def test_environment_yml_pins_agree_with_requirements_txt():
    requirements = pins(read("requirements.txt"))
    conda_pip = pins(pip_section(read("environment.yml")))
    assert len(requirements) > 40
    assert conda_pip == requirements


def test_environment_yml_is_the_pysyft_env_on_python_38():
    text = "\n".join(read("environment.yml"))
    assert re.search(r"^name: pysyft$", text, re.M)
    assert re.search(r"^\s+- python=3\.8(\.\d+)?$", text, re.M)


def test_the_conda_route_installs_this_projects_package_too():
    # `make venv` installs it after the pins; the conda env gets it as its last pip entry,
    # so that `import syft` and torchvision's MNIST download work there too.
    entries = [line.split("#", 1)[0].strip() for line in pip_section(read("environment.yml"))]
    assert [e for e in entries if e][-1] == "- ."


def test_the_build_of_this_package_is_pinned():
    text = "\n".join(read("pyproject.toml"))
    requires = re.search(r"^requires = \[(.*)\]$", text, re.M).group(1)
    for requirement in requires.split(","):
        assert PIN.match(requirement.strip().strip('"')), requirement
