# Two commands from a fresh machine with only Python 3: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch, installed before anything else so that no dependency drags in a
# multi-GB CUDA build. On a GPU machine: make install TORCH="torch==2.13.0 --index-url <cuda index>"
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.bigft-installed

.PHONY: install demo test test-fast lint format clean bench-memory bench-throughput bench-rl

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/python -m bigft.distributed.prepare
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/bigft-train

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15 tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

# bigft vs transformers' Trainer, and sequence packing (~5 min on 2 cores): benchmarks/results/
bench-throughput: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

# bigft's task=grpo vs TRL's GRPOTrainer (~20 min on 2 busy cores): benchmarks/results/rl.{md,json}.
# TRL lives in its own venv, never in bigft's (nor in CI's): pinned in benchmarks/requirements-rl.txt.
BENCH_RL_VENV ?= .venv-bench-rl
$(BENCH_RL_VENV)/.installed: benchmarks/requirements-rl.txt
	$(PYTHON) -m venv $(BENCH_RL_VENV)
	$(BENCH_RL_VENV)/bin/pip install -q $(TORCH)
	$(BENCH_RL_VENV)/bin/pip install -q -r benchmarks/requirements-rl.txt
	touch $@

bench-rl: $(STAMP) $(BENCH_RL_VENV)/.installed
	$(BIN)/python benchmarks/rl.py --trl-python $(BENCH_RL_VENV)/bin/python

lint: $(STAMP)
	$(BIN)/ruff check bigft tests benchmarks setup.py
	$(BIN)/ruff format --check bigft tests benchmarks setup.py

format: $(STAMP)
	$(BIN)/ruff check --fix bigft tests benchmarks setup.py
	$(BIN)/ruff format bigft tests benchmarks setup.py

# The memory table and plot of benchmarks/results/ (LLaMA-65B, analytic and traced; a few minutes).
bench-memory: $(STAMP)
	$(BIN)/python benchmarks/memory.py

clean:
	rm -rf $(VENV) $(BENCH_RL_VENV) outputs .cache .pytest_cache
