#!/usr/bin/env bash
# One GPU call for what issues 16 and 17 still lack (after bench/gpu_check.sh and bench/gpu_more_seeds.sh):
#   issue 17: PTL vs its backbone, DML peer vs one model (and the DML pair's ensemble vs its peers), STD student
#             vs the same student alone, each with its baseline in the same call (seeds 0-2, 16 epochs,
#             validation split; bench/seed_study.py; the longest trainings first);
#   issue 16: more seeds of torchreid's default OSNet x0.25 softmax recipe, reidkit vs torchreid (5-7);
#   beside them, `pytest -m gpu` (its last two rewrites had not run on a GPU).
#   bash bench/prepare_gpu_carry.sh                     # here, once (carry: .whl .gpu_peers .gpu_data)
#   BUDGET=540 bash bench/gpu_open_studies.sh           # there; OUT=folder for the JSON and the logs
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_open_out}; mkdir -p "$OUT" /tmp/open
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/.gpu_peers:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
C="--device cuda --data .gpu_data/cuhk03/labeled_128x64 --out $OUT --threads 1 --budget ${BUDGET:-480}"
timeout 420 python3 -m pytest -m gpu -p no:cacheprovider tests > "$OUT/pytest_gpu.log" 2>&1 &
python3 -m bench.seed_study --study methods --only std student ptl dml bot --seeds 0 1 2 --epochs 16 \
    --jobs 9 --estimate 150 --teacher-onnx .gpu_data/weights/osnet_x0_25_msmt17.onnx \
    --scratch /tmp/open/m --name methods_open $C > /tmp/open/m.log 2>&1 &
python3 -m bench.seed_study --study osnet_softmax --pairing unpaired --seeds 5 6 7 --jobs 4 --workers 2 \
    --estimate 170 --scratch /tmp/open/o --name osnet_unpaired_5_7 $C > /tmp/open/o.log 2>&1 &
wait
(cd /tmp/open && tar czf "$OUT/open_logs.tar.gz" $(find . -name '*.log'))
tail -n 1 /tmp/open/*.log; tail -n 3 "$OUT/pytest_gpu.log"
