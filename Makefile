# Two commands: `make papers` and `make test`. Both create .venv on first use and reinstall only
# when pyproject.toml changes.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: papers test lab lint sync bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

papers: $(STAMP)
	$(BIN)/python -m workbench run --all --profile quick

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile

lab: $(STAMP)
	$(BIN)/jupyter lab --ip=127.0.0.1 --ServerApp.root_dir=notebooks

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
