# rnnbench: `make help` lists the targets. Everything runs inside .venv, created on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export JAX_PLATFORMS ?= cpu
# Test processes (pytest-xdist): the suite is mostly single-threaded compiles, so one per core pays
# (measured on 2 cores: 8 min with one process, 5.5 with two).
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help install demo test test-full lint bench bench-levers bench-diagnostics bench-parallel bench-seeds bench-backward sweep report study cells clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(BIN)/rnnbench: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@

install: $(BIN)/rnnbench ## create .venv (if missing) and install rnnbench with its test tools

demo: install ## RNN vs LSTM vs GRU vs BiLSTM on adding and copy memory, then a comparison table
	$(BIN)/rnnbench sweep=demo

test: install ## the fast test suite (slow convergence checks excluded), in TEST_WORKERS processes
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test-full: install ## every test, including the slow convergence checks
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "slow or not slow"

lint: install ## ruff
	$(BIN)/ruff check rnnbench tests

bench: install ## rnnbench vs flax nn.RNN vs torch (pip install -e '.[bench]'), T/S/L/W shapes; see BENCHMARKS.md
	$(BIN)/python -m rnnbench.bench $(ARGS)

bench-levers: install ## micro-benchmarks that decided defaults (hoisting the input projection, unroll)
	$(BIN)/python -m rnnbench.bench --levers

bench-diagnostics: install ## cost of a gradient-diagnostics step relative to a train step
	$(BIN)/python -m rnnbench.bench --diagnostics

bench-parallel: install ## parallel (associative_scan) vs sequential form of minGRU, minLSTM and LRU
	$(BIN)/python -m rnnbench.bench --parallel

bench-seeds: install ## K seeds in one program (vmap/map/loop) vs K separate runs: make bench-seeds ARGS="--shape S"
	$(BIN)/python -m rnnbench.bench_seeds $(ARGS)

bench-backward: install ## LSTM, GRU, RNN training step: hand-written backward (backward=fused) vs autodiff, interleaved
	$(BIN)/python -m rnnbench.bench_backward $(ARGS)

cells: install ## list the cells with parameter counts: make cells ARGS="--input-size 2 --budget 10000"
	$(BIN)/rnnbench-cells $(ARGS)

sweep: install ## a versioned sweep: make sweep SWEEP=demo [ARGS="task.seq_len=50"]
	$(BIN)/rnnbench sweep=$(SWEEP) $(ARGS)

report: install ## results.csv, report.md and figures of run or sweep directories: make report DIR=outputs/demo/...
	$(BIN)/rnnbench-report $(DIR)

STUDIES := lstm_gru_bilstm greff_ablation forget_bias modern_vs_classic
# the variant each study's report tests every other against (rnnbench-report --reference)
REF_lstm_gru_bilstm := lstm
REF_greff_ablation := peephole_lstm
REF_forget_bias := lstm forget_bias=1
REF_modern_vs_classic := lstm
study: install ## a canonical study, then its report into experiments/NAME/report: make study NAME=forget_bias
	@case " $(STUDIES) " in *" $(NAME) "*) ;; *) echo "make study: NAME='$(NAME)' is not a study; choose one of: $(STUDIES)" >&2; exit 2;; esac
	$(eval STAMP := $(shell date +%Y-%m-%d_%H-%M-%S))
	$(BIN)/rnnbench sweep=$(NAME) hydra.sweep.dir=outputs/$(NAME)/$(STAMP) $(ARGS)
	$(BIN)/rnnbench-report outputs/$(NAME)/$(STAMP) --out experiments/$(NAME)/report $(if $(REF_$(NAME)),--reference "$(REF_$(NAME))")

clean: ## remove build artefacts (keeps outputs/ and .venv)
	rm -rf build dist .pytest_cache .ruff_cache
