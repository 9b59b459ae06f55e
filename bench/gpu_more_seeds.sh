#!/usr/bin/env bash
# A second, shorter GPU run after bench/gpu_check.sh --only studies: more seeds of the same studies.
#   bash bench/gpu_more_seeds.sh   (there; carry .whl .gpu_peers .gpu_data; OUT=folder)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_more_out}; mkdir -p "$OUT" /tmp/more
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/.gpu_peers:$PWD PYTHONUNBUFFERED=1
C="--device cuda --data .gpu_data/cuhk03/labeled_128x64 --out $OUT --threads 1 --budget ${BUDGET:-370}"
python3 -m bench.seed_study --study osnet_softmax --pairing unpaired --seeds 3 4 --jobs 2 --workers 3 \
    --estimate 150 --scratch /tmp/more/a --name osnet_unpaired_3_4 $C > /tmp/more/a.log 2>&1 &
python3 -m bench.seed_study --study osnet_softmax --pairing paired --seeds 1 2 --jobs 2 --workers 3 \
    --estimate 150 --scratch /tmp/more/b --name osnet_paired_1_2 $C > /tmp/more/b.log 2>&1 &
python3 -m bench.seed_study --study methods --only camaware adaptive_l2 constant_l2 --seeds 2 --epochs 16 \
    --jobs 3 --estimate 90 --scratch /tmp/more/c --name methods_seed2 $C > /tmp/more/c.log 2>&1 &
wait
(cd /tmp/more && tar czf "$OUT/more_logs.tar.gz" $(find . -name '*.log'))
tail -n 1 /tmp/more/*.log
