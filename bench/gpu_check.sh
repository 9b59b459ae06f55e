#!/usr/bin/env bash
# reidkit's GPU check, for a machine with a CUDA GPU and no network (docs/BENCHMARKS.md, "GPU").
# Installs the wheels carried in .whl/ (pydantic, ...) to /tmp/site, puts the carried torchreid
# (.gpu_peers/) on the path, runs bench/gpu_check.py and prints its JSON summary last.
#   bash bench/prepare_gpu_carry.sh      # here, once: fills .whl/, .gpu_peers/, .gpu_data/ (git-ignored)
#   bash bench/gpu_check.sh [--budget 450]   # there; OUT=folder for the JSON and logs
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
[ -d .gpu_peers ] && export PYTHONPATH=$PWD/.gpu_peers${PYTHONPATH:+:$PYTHONPATH}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"
python3 -m bench.gpu_check --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
