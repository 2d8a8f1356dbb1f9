#!/usr/bin/env bash
# Stage 2 on two stage-1 backbones, side by side (issue 18): does HyperCT's per-finding LoRA read
# what the windowed backbone's tokens hold (calcifications, medical material) although its frozen
# mean CLS does not? Both arms run configs/demo_v1.yaml unchanged except the backbone: v1 epoch 42
# (progress/demo-backbone-v1) and v1 + HU windows epoch 30 (progress/demo-backbone-v1w), on the 800
# first training phantoms (seeds 100000..100799, the probe's), 9 epochs (900 steps, the step count
# of v0.1's stage 2), one validation on the 200 validation phantoms at the end, one thread each.
#
#   bash scripts/ab_backbone_stage2.sh                     # ~80 min on 2 CPU cores
#   ARMS="v1w" EPOCHS=12 bash scripts/ab_backbone_stage2.sh
#   python benchmarks/stage2_runs.py runs/s2ab-v1 runs/s2ab-v1w --out benchmarks/results/stage2_backbone_ab.json
#
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
ARMS=${ARMS:-"v1 v1w"}
EPOCHS=${EPOCHS:-9}
COUNT=${COUNT:-800}
mkdir -p "$RUNS"
for arm in $ARMS; do
  [ -d "$RUNS/demo-backbone-$arm" ] || cp -r "progress/demo-backbone-$arm" "$RUNS/"
done
# the data first, with both cores (a no-op where the cache has them)
hyperct train --config configs/demo_v1.yaml --out "$RUNS/s2ab-prepare" --set "data.train.count=$COUNT" --prepare-only
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
pids=()
for arm in $ARMS; do
  hyperct train --config configs/demo_v1.yaml --out "$RUNS/s2ab-$arm" --overwrite --device cpu \
    --set "model.backbone_weights=$RUNS/demo-backbone-$arm" --set "data.train.count=$COUNT" \
    --set "train.epochs=$EPOCHS" --set "train.valid_every=$EPOCHS" > "$RUNS/s2ab-$arm.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
echo "stage-2 arms done: $(for arm in $ARMS; do printf '%s ' "$RUNS/s2ab-$arm"; done)(logs beside them)"
