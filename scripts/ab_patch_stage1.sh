#!/usr/bin/env bash
# The patch A/B of stage 1 v1 (issue 18): does a smaller patch let the backbone see the small findings?
# Measured first (benchmarks/finding_contrast.py): on its own tokens a calcification changes the mean
# by ~3-4 HU at patch 16, medical material by ~14, a nodule by ~19 (the findings the probe finds at
# chance); at patch 8 by ~7-9, ~33 and ~61.
# Both arms start from the same trained backbone (INIT, default: stage 1 v1 kept in progress/), with
# the v1 objective and fresh optimiser state, side by side for the same wall time, one thread each, on
# the same blocks of fresh seeds (FIRST_SEED on; the faster p16 arm generates each next block in the
# background, the p8 arm has no generating process of its own and reads them, as they are cached by
# then: two arms generating the same block would do the same work twice):
#   p16: INIT as it is (81 tokens per image);
#   p8:  INIT with its patch kernel summed down to 8 (init_patch_size: 324 tokens per image, ~6x the time
#        per training step on 2 CPU cores), which starts as INIT looking at the image magnified 2x;
#   p8crop (ARMS="p8crop"): p8 trained on 72-pixel crops placed on findings (optim.crop_size: 81 tokens
#        per crop, the cost of p16), validated on whole images like the others.
# Each arm's folder keeps its last whole epoch and can be resumed (hyperct pretrain --resume DIR).
#
#   bash scripts/ab_patch_stage1.sh                   # 90 minutes, arms p16 and p8
#   ARMS=p8crop MINUTES=60 bash scripts/ab_patch_stage1.sh   # one arm (blocks the A/B did not cache: generated inline)
#   MINUTES=60 INIT=runs/demo-backbone-v1 bash scripts/ab_patch_stage1.sh
#   python benchmarks/stage1_runs.py runs/ab-p16 runs/ab-p8 --out benchmarks/results/stage1_patch_ab.json
#   python benchmarks/probe_backbone.py --backbone runs/ab-p8 --train 800 --valid 200   # and runs/ab-p16
#
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
MINUTES=${MINUTES:-90}
INIT=${INIT:-progress/demo-backbone-v1}
FIRST_SEED=${FIRST_SEED:-1002200}  # after the blocks stage 1 v1 has used (block 11 of its run)
mkdir -p "$RUNS"
train="{type: phantom, count: 200, first_seed: $FIRST_SEED, matrix: 192, findings: null, pair: drop_one}"
common=(--config configs/demo_backbone_v1.yaml --overwrite --set "init=$INIT" --set "data.train=$train"
  --set data.keep_blocks=true)
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
ARMS=${ARMS:-p16 p8}
pids=()
for arm in $ARMS; do
  case $arm in
    p16) extra=() ;;
    p8) extra=(--set init_patch_size=8 --set data.prepare_workers=0) ;;
    p8crop) extra=(--set init_patch_size=8 --set optim.crop_size=72 --set data.prepare_workers=0) ;;
    *) echo "unknown arm $arm: use p16, p8, p8crop" >&2; exit 2 ;;
  esac
  timeout -s TERM "${MINUTES}m" hyperct pretrain "${common[@]}" --out "$RUNS/ab-$arm" "${extra[@]}" \
    > "$RUNS/ab-$arm.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}" || true
echo "arms stopped after ${MINUTES} minutes: $(printf "$RUNS/ab-%s " $ARMS)(logs beside them)"
