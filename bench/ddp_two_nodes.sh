#!/usr/bin/env bash
# Two "machines" on one host: two torchrun launches (--nnodes 2, one process each) that meet at a
# rendezvous on 127.0.0.1 and train one recipe data-parallel (gloo on CPUs, NCCL on GPUs), then the
# same recipe in one process for comparison.  On real machines run the same torchrun line on each,
# with --rdzv-endpoint HOST:PORT of the first machine (docs/TRAINING.md).
#   bash bench/ddp_two_nodes.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$PWD/.venv/bin/python}
OUT=${1:-/tmp/reidkit_two_nodes}
PORT=${PORT:-29517}
rm -rf "$OUT" && mkdir -p "$OUT"
$PY -m reidkit data synth --out "$OUT/data" --ids 40 --cameras 4 --distractors 10 >/dev/null
RECIPE=(configs/bot_r18_cuhk03.yaml data.dataset=synthetic data.val_identities=null "data.root=$OUT/data" "data.options={num_cameras: 4}"
        data.height=64 data.width=32 data.batch_size=16 data.num_instances=2 model.pretrained=none
        train.epochs=2 train.eval_every=1 train.device=cpu train.threads=1 train.channels_last=false)
for node in 0 1; do
    OMP_NUM_THREADS=1 $PY -m torch.distributed.run --nnodes 2 --nproc-per-node 1 --node-rank $node \
        --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:$PORT --rdzv-id reidkit-two-nodes \
        -m reidkit train "${RECIPE[@]}" "train.output_dir=$OUT/two_nodes" --no-progress > "$OUT/node$node.log" 2>&1 &
done
wait
OMP_NUM_THREADS=1 $PY -m reidkit train "${RECIPE[@]}" "train.output_dir=$OUT/one_process" --no-progress > "$OUT/one.log" 2>&1
grep -h "data parallel" "$OUT/node0.log"
for run in two_nodes one_process; do
    $PY - "$OUT/$run/history.json" "$run" <<'PYEOF'
import json, sys
h = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:12s} loss per epoch {[round(v, 4) for v in h['loss/total']]}  mAP {[round(100 * v, 2) for v in h['mAP']]}")
PYEOF
done
