# The Makefile is the interface: `make demo`, `make test`, `make lint`, `make bench`.
# Every target creates the virtual environment on first use (`make setup`).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dsbs-installed
# The CPU engine here and in CI; GPU images install `.[gpu]` instead (docker/).
EXTRAS ?= cpu,dev
PYTEST_ARGS ?=

.PHONY: setup test test-fast lint format typecheck demo sweep bench chaos image gpu-wheels clean

setup: $(STAMP)

# Rebuilt only when the project's dependencies change, so a second `make setup` does nothing.
$(STAMP): pyproject.toml scripts/setup_env.sh
	EXTRAS=$(EXTRAS) PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup_env.sh
	touch $(STAMP)

# The 25 slowest tests close the report: CI has 50 minutes on 2 cores and the CPUs it gets differ.
test: setup
	$(BIN)/python -m pytest --durations=25 $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python k8s/render.py --check
	$(BIN)/hadolint docker/Dockerfile docker/Dockerfile.gpu
	git ls-files -z | xargs -0 $(BIN)/detect-secrets-hook --baseline .secrets.baseline

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The demo's rows, which configs/local-demo.yaml reads; a file already holding them is kept as
# it is, so a second `make demo` or a `make sweep` after it generates nothing again.
DEMO_DATA := $(BIN)/dsbs data synth --task arithmetic --max-ops 1 --n 720 --seed 0 --out runs/demo/synth.jsonl

# The embedded default end to end: synthetic arithmetic -> SmolLM2 teacher (vLLM CPU) ->
# 1.8M-parameter T5 (DeepSpeed ZeRO-2, 2 Ray Train workers) -> report -> serve smoke test.
demo: setup
	$(DEMO_DATA)
	$(BIN)/dsbs run --config configs/local-demo.yaml

# The paper's accuracy-against-data comparison on the demo's task (12 trainings, 60-75 minutes on 2 cores).
sweep: setup
	$(DEMO_DATA)
	$(BIN)/dsbs sweep --config configs/local-demo.yaml

# The measured comparisons of BENCHMARKS.md (tens of minutes on 2 cores; results print as JSON).
bench: setup
	$(BIN)/python benchmarks/generate_throughput.py --rows 128 --max-tokens 64
	$(BIN)/python benchmarks/generate_memory.py --small 200 --large 2000
	$(BIN)/python benchmarks/train_throughput.py --rows 600 --steps 60 --repeats 2
	$(BIN)/python benchmarks/train_streaming.py --small 20000 --large 200000 --steps 300
	$(BIN)/python benchmarks/learning_check.py --steps 400
	$(BIN)/python benchmarks/serve_throughput.py --clients 32 --seconds 20 --repeats 2
	$(BIN)/python benchmarks/decode_threads.py --threads 1 2

# The reliability suite (RELIABILITY.md): hostile input at about a thousand cases per reader,
# schemathesis on both APIs, locust load, and the fault scenarios of generation, training,
# serving and the 2-node cluster, each recording its figures (make test runs them smaller).
CHAOS_RESULTS := runs/chaos/results.jsonl
# One pytest process per module: a driver reused for a second module's Ray cluster was once
# ended by Ray when a thread left from the first cluster woke up (Ray Data's usage poller,
# now off in tests: tests/conftest.py); each module still gets a driver of its own here.
chaos: setup
	mkdir -p runs/chaos && rm -f $(CHAOS_RESULTS)
	for module in $$($(BIN)/python -m pytest -m chaos --collect-only -q | grep '::' | cut -d: -f1 | sort -u); do \
		DSBS_CHAOS_RESULTS=$(CURDIR)/$(CHAOS_RESULTS) HYPOTHESIS_PROFILE=chaos \
			$(BIN)/python -m pytest -m chaos $(PYTEST_ARGS) $$module || exit 1; \
	done
	$(BIN)/python benchmarks/reliability_report.py $(CHAOS_RESULTS) RELIABILITY.md

# The CPU image with podman, without registry access (installs podman on Debian; see docker/).
image:
	bash scripts/containers.sh image

# The wheel folder benchmarks/gpu_check.py needs on a bare GPU machine (BENCHMARKS.md).
gpu-wheels: setup
	bash scripts/gpu_wheels.sh

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .mypy_cache
