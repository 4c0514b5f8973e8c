"""federated_learning.ipynb: committed without outputs, parameterised for papermill, and it runs."""
import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT

NOTEBOOK = os.path.join(ROOT, "federated_learning.ipynb")


def load(path):
    with open(path) as f:
        return json.load(f)


def code_cells(notebook):
    return [c for c in notebook["cells"] if c["cell_type"] == "code"]


def test_committed_without_outputs():
    for cell in code_cells(load(NOTEBOOK)):
        assert cell["outputs"] == [] and cell["execution_count"] is None, "".join(cell["source"])[:80]


def test_first_code_cell_holds_the_papermill_parameters():
    first = code_cells(load(NOTEBOOK))[0]
    assert "parameters" in first["metadata"].get("tags", [])
    source = "".join(first["source"])
    for name in ("data_dir", "epochs", "lr", "max_batches"):
        assert "\n{} = ".format(name) in "\n" + source


def test_imports_the_tutorial_instead_of_copying_it():
    source = "\n".join("".join(c["source"]) for c in code_cells(load(NOTEBOOK)))
    assert "import federated_learning as fl" in source
    assert "class SimpleCNN" not in source and "def train" not in source and "def test" not in source


@pytest.fixture(scope="module")
def executed(mnist_dir, tmp_path_factory):
    """The notebook run by papermill's command line, as the README says, on the small test data."""
    out = str(tmp_path_factory.mktemp("nb") / "out.ipynb")
    papermill = os.path.join(os.path.dirname(sys.executable), "papermill")
    result = subprocess.run(
        [papermill, NOTEBOOK, out, "-p", "data_dir", mnist_dir, "-p", "max_batches", "4",
         "-p", "lr", "0.05", "-p", "epochs", "2", "--cwd", ROOT, "--no-progress-bar"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    return load(out)


def outputs(cell):
    return cell.get("outputs", [])


@pytest.mark.slow
def test_every_cell_ran_without_error(executed):
    for cell in code_cells(executed):
        assert all(o["output_type"] != "error" for o in outputs(cell))
        assert cell["execution_count"] is not None


@pytest.mark.slow
def test_it_shows_the_client_table_the_test_results_and_the_plot(executed):
    streams = "".join(o.get("text", "") if isinstance(o.get("text"), str) else "".join(o.get("text", []))
                      for c in code_cells(executed) for o in outputs(c) if o["output_type"] == "stream")
    assert "client1" in streams and "client2" in streams and "samples" in streams
    assert streams.count("Test set: Average loss") == 2  # one per epoch
    data = [o.get("data", {}) for c in code_cells(executed) for o in outputs(c)]
    assert any("image/png" in d for d in data), "no inline plot"
    assert any("application/vnd.jupyter.widget-view+json" in d for d in data), "no notebook progress bar"
