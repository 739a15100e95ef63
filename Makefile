# Two commands: `make papers` and `make test` (`make docs` builds the documentation site). Each
# creates .venv on first use and reinstalls only when pyproject.toml or requirements.lock changes.
# requirements.lock pins the exact versions the test suite passes with (pip constraints;
# pyproject.toml keeps the ranges); `make lock` rewrites it from what .venv holds.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
PIP_INSTALL := $(BIN)/python -m pip install --quiet --quiet -c $(LOCK)

.PHONY: papers test docs lab lab-reset lab-save workshop workshop-clean lint sync lock bench mutate clean

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --quiet --upgrade pip
	$(PIP_INSTALL) -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

papers: $(STAMP)
	$(BIN)/python -m workbench run --all --profile quick --jobs 2

# One BLAS thread per pytest worker: two workers on two cores, no oversubscription. Files are handed
# out in collection order (tests/conftest.py puts the longest first; xdist would otherwise order
# them by test count, which sent the few-test paper-run files last). A test whose
# worker process died (a segfault or abort inside XLA's compiler, seen in about one fresh-clone
# run in two on JAX 0.10.2) runs once more in a fresh worker and is listed as rerun (the hook in
# tests/conftest.py; pytest-rerunfailures reports it); a test that fails is never rerun.
test: $(STAMP)
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=15 \
		--reruns 1 --only-rerun "crashed while running"

# The documentation site (mkdocs.yml: home, architecture, tutorials, the API reference built from
# the docstrings) into site/, git-ignored; --strict turns every warning (a broken link, a docstring
# mkdocstrings cannot read) into an error. Read it at site/index.html.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

# JupyterLab on lab/, git-ignored working copies of the papers (jupyter/lab_config.py): a lab
# session never touches notebooks/. 127.0.0.1 and token authentication; --allow-root only for
# uid 0. Extra flags: make lab LAB_ARGS="--port=9999 --no-browser".
LAB_ARGS ?=
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
lab: $(STAMP)
	$(BIN)/python -m workbench lab copies
	$(BIN)/jupyter lab --config=jupyter/lab_config.py $(ALLOW_ROOT) $(LAB_ARGS)

# Start lab copies afresh from the committed papers (all, or NAME=tour).
lab-reset: $(STAMP)
	$(BIN)/python -m workbench lab reset $(NAME)

# Make your lab copy of paper NAME the committed paper (source and pair, without outputs).
lab-save: $(STAMP)
	$(BIN)/python -m workbench lab save $(NAME)

# Every paper as a voila page for a class (see the README's workshop guide): each paper is
# recorded once, pages replay the recording and start their panel on a click.
# make workshop WORKSHOP_IP=0.0.0.0 serves a classroom network; PAPERS="tour schedule_bounds"
# serves only those; DAY=day.yaml fixes the day's parameters per paper (its papers are served);
# PREHEAT=N keeps N kernels per paper with the page shown (PREHEAT_PANELS=1: the panel live too);
# CHECK=1 starts every panel once before serving (a rehearsal).
WORKSHOP_IP ?= 127.0.0.1
WORKSHOP_PORT ?= 8866
WORKSHOP_ARGS ?=
PAPERS ?=
PREHEAT ?=
PREHEAT_PANELS ?=
DAY ?=
CHECK ?=
WORKSHOP_STAMP := $(VENV)/.workshop
$(WORKSHOP_STAMP): $(STAMP)
	$(PIP_INSTALL) -e '.[dev,workshop]'
	@touch $(WORKSHOP_STAMP)

workshop: $(WORKSHOP_STAMP)
	$(BIN)/python -m workbench workshop --serve --ip=$(WORKSHOP_IP) --port=$(WORKSHOP_PORT) $(if $(PREHEAT),--preheat --pool-size=$(PREHEAT)) $(if $(PREHEAT_PANELS),--preheat-panels) $(if $(DAY),--parameters=$(DAY)) $(if $(CHECK),--check) $(WORKSHOP_ARGS) $(PAPERS)

workshop-clean:
	rm -rf workshop

lint: $(STAMP)
	$(BIN)/ruff check workbench tests benchmarks notebooks

# Paired notebooks: regenerate every .ipynb from its jupytext .py source.
sync: $(STAMP)
	$(BIN)/jupytext --sync notebooks/*.py

# Rewrite requirements.lock from the versions installed in .venv: the closure of the package's
# requirements and its dev and workshop extras (.ci/lock.py). To move to newer versions:
# .venv/bin/python -m pip install --upgrade -e '.[dev,workshop]', then make test, then make lock.
lock:
	@test -x $(BIN)/python || { echo "make lock: no $(VENV) yet; run make test first"; exit 1; }
	$(BIN)/python .ci/lock.py

# Peers for benchmarks; torch first so pip takes the CPU wheel from local disk.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --quiet torch==2.13.0
	$(PIP_INSTALL) -e '.[dev,bench]'

# Mutation testing of the numerical core (benchmarks/mutations.py): each recorded mutation applied
# alone to a temporary copy of the repository and run against its targeted tests; writes
# benchmarks/results/mutations.{json,md}. MUTATE_ARGS="--jobs 2" or "--only ID[,ID]".
MUTATE_ARGS ?=
mutate: $(STAMP)
	$(BIN)/python benchmarks/mutations.py $(MUTATE_ARGS)

clean:
	rm -rf $(VENV) runs site
