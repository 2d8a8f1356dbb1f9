#!/usr/bin/env bash
# The capacity A/B of stage 1 v1 (issue 18): the demo backbone (D96 / 4 layers / patch 16) against one
# twice as wide (D192 / 4 layers / patch 16, ~2.6x the compute per image), both from scratch with the
# v1 objective (configs/demo_backbone_v1.yaml without its init), side by side for the same wall time,
# one thread each, on the same blocks of fresh seeds (kept in the cache: the arm that reaches a block
# first generates it, the other reads it). Each arm's folder keeps its last whole epoch.
#
#   bash scripts/ab_capacity_stage1.sh                # 60 minutes
#   MINUTES=90 bash scripts/ab_capacity_stage1.sh
#   python benchmarks/stage1_runs.py runs/ab-d96 runs/ab-d192 --out benchmarks/results/stage1_capacity_ab.json
#   python benchmarks/probe_backbone.py --backbone runs/ab-d96 --train 800 --valid 200   # and runs/ab-d192
#
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
MINUTES=${MINUTES:-60}
mkdir -p "$RUNS"
# first the validation phantoms and blocks 0 and 1 (else both arms generate them at once); python -c, as
# the phantom-generating worker processes cannot start from a script read on stdin
python -c '
from hyperct.training.cache import PreprocessCache
from hyperct.training.datasets import build_dataset
from hyperct.training.pretrain import block_spec
from hyperct.training.pretrain_config import PretrainConfig

dc = PretrainConfig.load("configs/demo_backbone_v1.yaml").data
cache = PreprocessCache(dc.cache_dir, dc.cache_dtype, compress=dc.cache_compress)
for spec in (dc.valid, block_spec(dc.train, 0), block_spec(dc.train, 1)):
    build_dataset(spec, cache=cache, field="data", progress=True, workers=2)
'
common=(--config configs/demo_backbone_v1.yaml --overwrite --set init=null --set data.keep_blocks=true)
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
timeout -s TERM "${MINUTES}m" hyperct pretrain "${common[@]}" --out "$RUNS/ab-d96" > "$RUNS/ab-d96.log" 2>&1 &
a=$!
timeout -s TERM "${MINUTES}m" hyperct pretrain "${common[@]}" --out "$RUNS/ab-d192" \
  --set 'backbone={base: demo, hidden_size: 192, intermediate_size: 768}' > "$RUNS/ab-d192.log" 2>&1 &
b=$!
wait $a $b || true
echo "arms stopped after ${MINUTES} minutes: $RUNS/ab-d96, $RUNS/ab-d192 (logs beside them)"
