# reidkit: `make demo` and `make test` set everything up on a fresh machine.
VENV ?= .venv
# the shipped recipes name datasets relative to $REIDKIT_DATA (cuhk03/labeled, market1501, ...): here, the shared
# real data beside the checkout when it is there
export REIDKIT_DATA ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),data)
PY := $(VENV)/bin/python

.PHONY: install demo test test-fast lint bench-peers bench gpu-check gpu-carry two-nodes clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install            ## built-in synthetic data -> train -> evaluate -> demo_output/report/index.html
	$(VENV)/bin/reidkit demo --output demo_output --no-progress --overwrite

test: install lint       ## lint + types, then the whole test suite (real-data tests skip when ../shared/data is absent)
	$(PY) -m pytest --durations=10

test-fast: install       ## the development lane: every test not marked slow (a minute or two)
	$(PY) -m pytest -m "not slow"

lint: install            ## ruff (E, F, I, B, UP) over the repository and mypy over reidkit/ (pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench-peers: install     ## torchreid 0.2.5 and fastreid 1.4.0 into the venv, for bench/ only
	bash bench/setup_peers.sh

bench: bench-peers       ## the benchmarks recorded in docs/BENCHMARKS.md
	$(PY) -m bench.bench_evaluation
	$(PY) -m bench.bench_rerank
	$(PY) -m bench.bench_data
	$(PY) -m bench.bench_train

gpu-check:               ## on a CUDA machine: tests marked gpu + GPU benchmarks -> one JSON summary (bench/gpu_check.py)
	bash bench/gpu_check.sh

gpu-carry: bench-peers   ## fill .whl/ .gpu_peers/ .gpu_data/ (git-ignored) for an offline GPU machine
	bash bench/prepare_gpu_carry.sh

two-nodes: install       ## two torchrun launches (--nnodes 2) on this host, gloo: data parallel vs one process
	bash bench/ddp_two_nodes.sh

clean:
	rm -rf $(VENV) demo_output runs
