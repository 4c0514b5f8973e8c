# Two commands do everything:  make run   and   make test
# Both first build .venv (CPython 3.8 + the pins in requirements.txt) if it is missing;
# make test also builds .venv-flower (CPython 3.11+, flower/requirements.txt) for the Flower twin.
#   make run ARGS="--epochs 3 --lr 0.02"     pass flags to federated_learning.py
#                                            (default: its own, --epochs 1 --lr 0.01)
#   make test                                the fast part of both suites, after every change (~10 min)
#   make test-all                            every test of both suites, as CI runs them
#   make lint                                ruff, and the package's layers (import-linter), from .venv-lint
#   make venv                                only build the environment
#   make bench ARGS="--max-batches 100"      the speed benchmark (docs/)
#   make experiments DATA=./data             the experiments table (~40 min)
#   make aggregation-experiments DATA=./data the aggregation table (~15 min)
#   make fedavg-paper DATA=./data            the FedAvg paper's Table 2, a subset (about an hour)
#   make fedavg-paper SYSTEM=flower DATA=./data   the same on the Flower twin
#   make privacy-table DATA=./data           DP-FedAvg: accuracy against epsilon (~20 min)
#   make notebook                            Jupyter on federated_learning.ipynb
#   make notebook NOTEBOOK=../PySyft/examples/tutorials   Jupyter on another notebook or folder
#   make course COURSE=../PySyft             run PySyft 0.2.6's course, Parts 01-12 bis (docs/)
#   make flower ARGS="--epochs 3"            the Flower twin (flower/), same flags as the script
#   make flower-venv                         only build the twin's environment, .venv-flower
#   make compare ARGS="--data-dir DIR"       PySyft and Flower side by side, one table (docs/)
#   make fuzz                                5,000 broken messages to each end of the wire (docs/)

VENV    := .venv
PYTHON  := $(VENV)/bin/python
FLOWER_VENV   := .venv-flower
FLOWER_PYTHON := $(FLOWER_VENV)/bin/python
LINT_VENV     := .venv-lint
ARGS    ?=
# Build tools for the few source packages (psutil, tornado, phe), pinned for Python 3.8.
# pip stays at 24.0: pip 24.1+ rejects syft 0.2.6's wheel metadata as invalid.
BOOTSTRAP := pip==24.0 setuptools==75.3.0 wheel==0.45.1

.PHONY: help run test test-pysyft test-flower test-all test-all-pysyft test-all-flower lint lint-venv fuzz venv \
	flower flower-venv compare bench experiments aggregation-experiments fedavg-paper fedavg-paper-lr privacy-table \
	notebook course clean

run: venv  ## train: federated_learning.py with ARGS (default: 1 epoch, lr 0.01)
	$(PYTHON) federated_learning.py $(ARGS)

# Both suites, each in its own environment; PYTEST_ARGS goes to each. make test leaves out the tests
# marked slow (docs/contributing.md says which, and why the fast part still proves the equivalences).
FAST := -m "not slow"
test: test-pysyft test-flower  ## the fast part of both suites, after every change; PYTEST_ARGS goes to both
test-pysyft: venv  ## the fast part of the PySyft suite, tests/, in .venv
	$(PYTHON) -m pytest $(FAST) $(PYTEST_ARGS)

test-flower: venv flower-venv  ## the fast part of the Flower twin's suite, flower/tests/, in .venv-flower
	$(FLOWER_PYTHON) -m pytest flower/tests $(FAST) $(PYTEST_ARGS)

test-all: test-all-pysyft test-all-flower  ## every test of both suites (what .ci/run runs)
test-all-pysyft: venv  ## every test of the PySyft suite
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test-all-flower: venv flower-venv  ## every test of the Flower twin's suite
	$(FLOWER_PYTHON) -m pytest flower/tests $(PYTEST_ARGS)

# ruff (pyproject.toml's [tool.ruff], flower/'s own for Python 3.11+) and import-linter's contracts on the
# layers of fl_tutorial ([tool.importlinter]); their own small environment, CPython 3.11+.
lint: lint-venv  ## ruff on everything, and fl_tutorial's layers (import-linter)
	$(LINT_VENV)/bin/ruff check .
	PYTHONPATH=. $(LINT_VENV)/bin/lint-imports --no-cache

lint-venv: $(LINT_VENV)/.installed  ## only build .venv-lint (CPython 3.11+ and tools/lint-requirements.txt)
$(LINT_VENV)/.installed: tools/lint-requirements.txt
	@python=$$(sh tools/find-python.sh 3.11 3.12 3.13) || exit 1; \
	if [ ! -x $(LINT_VENV)/bin/python ]; then "$$python" -m venv $(LINT_VENV) || exit 1; fi; \
	$(LINT_VENV)/bin/python -m pip install --quiet --no-deps -r tools/lint-requirements.txt \
	|| { echo "error: installing the linters into $(LINT_VENV) failed (pip's message is above)." >&2; exit 1; }
	@touch $@

# The wire fuzzed longer than make test does (docs/separate-parties.md, "Security"): FUZZ_CASES broken messages to a
# worker, and as many broken replies to the coordinator.
FUZZ_CASES ?= 5000
fuzz: venv  ## the wire's long fuzz test: FUZZ_CASES (5,000) broken messages to each end
	FL_TUTORIAL_FUZZ_CASES=$(FUZZ_CASES) $(PYTHON) -m pytest -s -q tests/test_wire_fuzz.py $(PYTEST_ARGS)

# The Flower twin (flower/README.md): FedAvg, 2 clients, IID, 1 round, seed 1, MNIST in ./data by default.
flower: flower-venv  ## the Flower twin (flower/), same flags as the script, in ARGS
	$(FLOWER_PYTHON) -m flower_twin.launch $(ARGS)

# PySyft and the twin with the same flags, and plain PyTorch in each environment: one table.
compare: venv flower-venv  ## PySyft and the Flower twin side by side, one table (docs/flower.md)
	$(FLOWER_PYTHON) tools/compare.py $(ARGS)

bench: venv  ## the speed benchmark, a markdown table (docs/speed.md)
	$(PYTHON) tools/bench.py $(ARGS)

# The experiments table (docs/experiments.md): same data, lr and total local epochs, one flag changed at a time.
DATA ?= ./data
EXPERIMENTS := \
	iid-2-sequential:--num-clients=2,--partition=iid,--strategy=sequential \
	iid-2-fedavg:--num-clients=2,--partition=iid,--strategy=fedavg \
	noniid-2-sequential:--num-clients=2,--partition=noniid,--strategy=sequential \
	noniid-2-fedavg:--num-clients=2,--partition=noniid,--strategy=fedavg \
	iid-5-sequential:--num-clients=5,--partition=iid,--strategy=sequential \
	iid-5-fedavg:--num-clients=5,--partition=iid,--strategy=fedavg

# FedAvg's aggregation, plain vs secret-shared (docs/privacy.md): one round of one local epoch each.
AGGREGATION_EXPERIMENTS := \
	agg-iid-2-server:--num-clients=2,--partition=iid,--strategy=fedavg,--aggregation=server \
	agg-iid-2-secure:--num-clients=2,--partition=iid,--strategy=fedavg,--aggregation=secure \
	agg-iid-2-trusted:--num-clients=2,--partition=iid,--strategy=fedavg,--aggregation=trusted \
	agg-noniid-2-server:--num-clients=2,--partition=noniid,--strategy=fedavg,--aggregation=server \
	agg-noniid-2-secure:--num-clients=2,--partition=noniid,--strategy=fedavg,--aggregation=secure \
	agg-iid-5-server:--num-clients=5,--partition=iid,--strategy=fedavg,--aggregation=server \
	agg-iid-5-secure:--num-clients=5,--partition=iid,--strategy=fedavg,--aggregation=secure \
	agg-noniid-5-server:--num-clients=5,--partition=noniid,--strategy=fedavg,--aggregation=server \
	agg-noniid-5-secure:--num-clients=5,--partition=noniid,--strategy=fedavg,--aggregation=secure

# $(1): the runs (name:flags,...), $(2): epochs. Each run writes results/NAME.{json,png,log}.
define run_experiments
	@mkdir -p results
	@for run in $(1); do \
		name=$${run%%:*}; flags=$$(echo $${run#*:} | tr , ' '); \
		echo "== $$name: $$flags"; \
		$(PYTHON) federated_learning.py --epochs $(2) --lr 0.01 --data-dir $(DATA) $$flags \
			--metrics-out results/$$name.json --plot results/$$name.png > results/$$name.log || exit 1; \
	done
	$(PYTHON) tools/results_table.py $(foreach run,$(1),results/$(firstword $(subst :, ,$(run))).json)
endef

experiments: venv  ## the experiments table on the MNIST in DATA (~40 min, docs/experiments.md)
	$(call run_experiments,$(EXPERIMENTS),2)

aggregation-experiments: venv  ## the aggregation table on the MNIST in DATA (~15 min, docs/privacy.md)
	$(call run_experiments,$(AGGREGATION_EXPERIMENTS),1)

# A subset of the FedAvg paper's Table 2 (docs/experiments.md, "The FedAvg paper"): 100 clients, 10 a round,
# one run per core; results/fedavg-paper/table.md beside the paper's rounds, and accuracy.png.
# SYSTEM=flower: the same runs on the Flower twin (flower/README.md), one at a time.
SYSTEM ?= pysyft
fedavg-paper: venv $(if $(filter flower,$(SYSTEM)),flower-venv)  ## the FedAvg paper's Table 2, a subset (SYSTEM=flower: the twin)
	$(PYTHON) tools/fedavg_paper.py --data-dir $(DATA) --system $(SYSTEM) $(ARGS)

fedavg-paper-lr: venv  ## the learning-rate search behind make fedavg-paper (~10 min on 2 cores)
	$(PYTHON) tools/fedavg_paper.py --data-dir $(DATA) --search $(ARGS)

# DP-FedAvg's accuracy against epsilon (README, "Privacy"): the paper's setting, one run per noise multiplier.
privacy-table: venv  ## DP-FedAvg, accuracy against epsilon on the MNIST in DATA (~20 min on 2 cores)
	$(PYTHON) tools/privacy_table.py --data-dir $(DATA) $(ARGS)

# Jupyter on the tutorial notebook, in .venv; every PySyft course notebook opens there too.
# Jupyter refuses to run as root unless told, as in a container: then it is told.
NOTEBOOK ?= federated_learning.ipynb
notebook: venv  ## Jupyter on federated_learning.ipynb (or NOTEBOOK)
	$(VENV)/bin/jupyter notebook $(NOTEBOOK) $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) $(ARGS)

# PySyft 0.2.6's own course (a checkout of OpenMined/PySyft at tag v0.2.6), run as its CI ran it.
COURSE ?=
course: venv  ## run PySyft 0.2.6's course, Parts 01-12 bis, from COURSE (docs/notebook-and-course.md)
	$(PYTHON) tools/run_course.py $(COURSE) $(ARGS)

venv: $(VENV)/.installed  ## only build .venv (CPython 3.8 and the pins of requirements.txt)
# --no-deps: requirements.txt is the complete set. Without it pip would chase
# syft's aiortc -> PyAV 8 dependency, which no longer builds (docs/installing.md, "WebRTC").
# Then this project's own package: fl_tutorial and the start-up hook that lets every
# process of .venv `import syft` and download MNIST (docs/notebook-and-course.md, "The course").
$(VENV)/.installed: requirements.txt pyproject.toml setup.py $(wildcard fl_tutorial/*.py fl_tutorial/*/*.py)
	@python=$$(sh tools/find-python.sh 3.8) || exit 1; \
	if [ ! -x $(PYTHON) ] || ! $(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 8))' 2>/dev/null; then \
		echo "Creating $(VENV) with $$python"; rm -rf $(VENV); "$$python" -m venv $(VENV) || exit 1; \
	fi; \
	$(PYTHON) -m pip install --quiet $(BOOTSTRAP) \
	&& $(PYTHON) -m pip install --no-deps -r requirements.txt \
	&& rm -rf build && $(PYTHON) -m pip install --quiet --no-deps --no-build-isolation . \
	|| { echo >&2; echo "error: installing the pinned packages into $(VENV) failed (pip's message is above)." >&2; \
	     echo "It needs access to PyPI (torch 1.4.0 is a 750 MB wheel) and a C compiler with Python 3.8 headers for psutil." >&2; \
	     echo "Fix the cause and run make again; it picks up where it stopped." >&2; exit 1; }
	@touch $@

# The twin's environment: CPython 3.11+ and the pins of flower/requirements.txt (no build tools
# needed: every pin is a wheel), then the app itself, editable, so that flower_twin and the
# tutorial's core (fl_tutorial/core, and nothing else of fl_tutorial) are importable in every process
# Flower and Ray start. Strict mode links each file: a new file of theirs installs the app again.
flower-venv: $(FLOWER_VENV)/.installed  ## only build .venv-flower (CPython 3.11+ and flower/requirements.txt)
$(FLOWER_VENV)/.installed: flower/requirements.txt flower/pyproject.toml $(wildcard flower/flower_twin/*.py) \
		$(wildcard fl_tutorial/core/*.py)
	@python=$$(sh tools/find-python.sh 3.11 3.12 3.13) || exit 1; \
	if [ ! -x $(FLOWER_PYTHON) ] || ! $(FLOWER_PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' 2>/dev/null; then \
		echo "Creating $(FLOWER_VENV) with $$python"; rm -rf $(FLOWER_VENV); "$$python" -m venv $(FLOWER_VENV) || exit 1; \
	fi; \
	$(FLOWER_PYTHON) -m pip install --no-deps -r flower/requirements.txt \
	&& rm -rf flower/build && $(FLOWER_PYTHON) -m pip install --quiet --no-deps --no-build-isolation \
		--config-settings editable_mode=strict -e flower \
	|| { echo >&2; echo "error: installing the pinned packages into $(FLOWER_VENV) failed (pip's message is above)." >&2; \
	     echo "It needs access to PyPI the first time: torch 2.14.1 with its CUDA libraries is about 5 GB on Linux." >&2; \
	     echo "Fix the cause and run make again; it picks up where it stopped." >&2; exit 1; }
	@touch $@

clean:  ## remove the environments and the build files
	rm -rf $(VENV) $(FLOWER_VENV) $(LINT_VENV) .pytest_cache build flower/build fl_tutorial.egg-info flower/*.egg-info

# The targets, one line each, from the ## comments on their rule lines.
help:  ## this list
	@echo 'make TARGET [ARGS="..."], the targets:'
	@awk -F':.*## ' '/^[a-z][a-z0-9-]*:.*## / {printf "  %-24s %s\n", $$1, $$2}' $(firstword $(MAKEFILE_LIST))
