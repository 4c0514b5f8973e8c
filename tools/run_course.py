"""Run PySyft 0.2.6's own course, Parts 01 to 12 bis, in this environment, as PySyft's CI ran it.

    make course COURSE=path/to/PySyft        (a checkout of OpenMined/PySyft at tag v0.2.6)

Like PySyft's test/notebooks/test_notebooks.py: the tutorials are copied to a
temporary folder as examples/, the repository's examples/data beside them as
data/, and each notebook is executed unmodified with papermill and the CI's
parameters (epochs=1, n_test_batches=5, n_train_items=64, n_test_items=64).
Parts 13a to 13c need TensorFlow and tf-encrypted and are not run (docs/notebook-and-course.md, "The course").
MNIST comes through torchvision's download, that is, this environment's verified
mirrors (MNIST_MIRRORS to use others); --mnist DIR copies local files in first.
"""
import argparse
import glob
import os
import shutil
import sys
import tempfile
import time

import papermill

PARAMETERS = {"epochs": 1, "n_test_batches": 5, "n_train_items": 64, "n_test_items": 64}
NOT_RUN = ("Part 13a", "Part 13b", "Part 13c")


def tutorials_folder(path):
    for candidate in (os.path.join(path, "examples", "tutorials"), path):
        if glob.glob(os.path.join(candidate, "Part 01*.ipynb")):
            return candidate
    sys.exit("error: no 'Part 01 ... .ipynb' in {0} or {0}/examples/tutorials. Get the course with:\n"
             "    git clone --branch v0.2.6 --depth 1 https://github.com/OpenMined/PySyft".format(path))


def course_parts(folder):
    parts = sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "Part *.ipynb")))
    return [p for p in parts if not p.startswith(NOT_RUN)]


def first_error(path):
    """The notebook's first error output, as one line."""
    import nbformat

    for cell in nbformat.read(path, as_version=4).cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return "{}: {}".format(output["ename"], output["evalue"])[:300]
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("course", metavar="PYSYFT", help="a PySyft v0.2.6 checkout, or its examples/tutorials")
    parser.add_argument("--only", metavar="TEXT", help="run only the parts whose name contains TEXT (e.g. 'Part 10')")
    parser.add_argument("--cell-timeout", type=int, metavar="S", help="fail a cell after S seconds (PySyft's CI: 300)")
    parser.add_argument("--mnist", metavar="DIR", help="copy DIR/MNIST/raw into the course's data folder first")
    parser.add_argument("--out", metavar="DIR", help="keep the executed notebooks in DIR")
    args = parser.parse_args(argv)

    source = tutorials_folder(args.course)
    parts = [p for p in course_parts(source) if not args.only or args.only in p]
    work = tempfile.mkdtemp(prefix="pysyft-course-")
    results = []
    try:
        shutil.copytree(source, os.path.join(work, "examples"))
        data = os.path.join(os.path.dirname(source), "data")
        if os.path.isdir(data):
            shutil.copytree(data, os.path.join(work, "data"))
        if args.mnist:
            shutil.copytree(os.path.join(args.mnist, "MNIST", "raw"), os.path.join(work, "data", "MNIST", "raw"))
        out_dir = args.out or os.path.join(work, "executed")
        os.makedirs(out_dir, exist_ok=True)
        for part in parts:
            print("== {}".format(part), flush=True)
            out = os.path.join(out_dir, part)
            start = time.time()
            try:
                papermill.execute_notebook(os.path.join(work, "examples", part), out, parameters=PARAMETERS,
                                           cwd=os.path.join(work, "examples"), kernel_name="python3",
                                           execution_timeout=args.cell_timeout, progress_bar=False)
                error = None
            except Exception as failure:  # papermill's PapermillExecutionError names the cell
                error = first_error(out) if os.path.exists(out) else None
                error = error or "{}: {}".format(type(failure).__name__, str(failure).splitlines()[0][:300])
            results.append((part, time.time() - start, error))
            print("   {} in {:.0f} s{}".format("FAILED" if error else "ok", results[-1][1],
                                             ": " + error if error else ""), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("\n| part | result | seconds |\n|---|---|---:|")
    for part, seconds, error in results:
        print("| {} | {} | {:.0f} |".format(part[:-len(".ipynb")], "failed: " + error if error else "ok", seconds))
    failed = sum(1 for _, _, error in results if error)
    print("\n{} passed, {} failed".format(len(results) - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
