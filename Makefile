# reidkit: `make demo` and `make test` set everything up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test bench-peers bench gpu-check gpu-carry two-nodes clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install            ## built-in synthetic data -> train -> evaluate -> demo_output/report/index.html
	$(VENV)/bin/reidkit demo --output demo_output --no-progress --overwrite

test: install            ## the test suite (real-data tests skip when ../shared/data is absent)
	$(PY) -m pytest

bench-peers: install     ## torchreid 0.2.5 and fastreid 1.4.0 into the venv, for bench/ only
	bash bench/setup_peers.sh

bench: bench-peers       ## the benchmarks recorded in docs/BENCHMARKS.md
	$(PY) bench/bench_evaluation.py
	$(PY) bench/bench_rerank.py
	$(PY) bench/bench_data.py
	$(PY) bench/bench_train.py

gpu-check:               ## on a CUDA machine: tests marked gpu + GPU benchmarks -> one JSON summary (bench/gpu_check.py)
	bash bench/gpu_check.sh

gpu-carry: bench-peers   ## fill .whl/ .gpu_peers/ .gpu_data/ (git-ignored) for an offline GPU machine
	bash bench/prepare_gpu_carry.sh

two-nodes: install       ## two torchrun launches (--nnodes 2) on this host, gloo: data parallel vs one process
	bash bench/ddp_two_nodes.sh

clean:
	rm -rf $(VENV) demo_output runs
