# DEKR — common tasks. `make help` lists them.
PYTHON ?= python
# torch/torchvision pinned to the builds this project is tested with; override for other CUDA builds,
# e.g. `make install TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := .install.stamp

.DEFAULT_GOAL := help
.PHONY: help install quickstart test test-fast notebooks lint format bench clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install $(TORCH_SPEC)
	$(PYTHON) -m pip install -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)  ## install torch, torchvision and the package with dev extras (idempotent)

quickstart: install  ## train a small DEKR on generated synthetic people (CPU, no download)
	$(PYTHON) src/train.py

test: install  ## run the whole test suite
	$(PYTHON) -m pytest -q

test-fast: install  ## the suite without tests marked slow
	$(PYTHON) -m pytest -q -m "not slow"

notebooks: install  ## execute the notebooks headlessly (as the test suite does)
	$(PYTHON) -m pytest -q tests/test_notebooks.py

lint: install  ## ruff check and ruff format --check
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m ruff format --check src tests benchmarks

format: install  ## ruff format + autofix
	$(PYTHON) -m ruff check --fix src tests benchmarks
	$(PYTHON) -m ruff format src tests benchmarks

bench: install  ## print the benchmark tables on this machine
	$(PYTHON) benchmarks/run.py

clean:  ## remove caches and run outputs
	rm -rf .pytest_cache .ruff_cache outputs multirun $(STAMP)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
