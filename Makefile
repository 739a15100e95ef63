# Two commands: `make papers` and `make test`. Both create .venv on first use and reinstall only
# when pyproject.toml changes.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: papers test lab lab-reset lab-save workshop workshop-clean lint sync bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

papers: $(STAMP)
	$(BIN)/python -m workbench run --all --profile quick --jobs 2

# One BLAS thread per pytest worker: two workers on two cores, no oversubscription.
test: $(STAMP)
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadfile --durations=15

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

# Every paper as a voila app with interactive=True (see the README's workshop guide).
# make workshop WORKSHOP_IP=0.0.0.0 serves a classroom network; PAPERS="tour schedule_bounds"
# serves only those; PREHEAT=1 keeps one executed kernel ready per paper (start it early).
WORKSHOP_IP ?= 127.0.0.1
WORKSHOP_PORT ?= 8866
WORKSHOP_ARGS ?=
PAPERS ?=
PREHEAT ?=
WORKSHOP_STAMP := $(VENV)/.workshop
$(WORKSHOP_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --quiet -e '.[dev,workshop]'
	@touch $(WORKSHOP_STAMP)

workshop: $(WORKSHOP_STAMP)
	$(BIN)/python -m workbench workshop --serve --ip=$(WORKSHOP_IP) --port=$(WORKSHOP_PORT) $(if $(PREHEAT),--preheat) $(WORKSHOP_ARGS) $(PAPERS)

workshop-clean:
	rm -rf workshop

lint: $(STAMP)
	$(BIN)/ruff check workbench tests benchmarks notebooks

# Paired notebooks: regenerate every .ipynb from its jupytext .py source.
sync: $(STAMP)
	$(BIN)/jupytext --sync notebooks/*.py

# Peers for benchmarks; torch first so pip takes the CPU wheel from local disk.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet --quiet -e '.[dev,bench]'

clean:
	rm -rf $(VENV) runs
