#!/usr/bin/env bash
# Reproduce the SHIPPED demo model v0.2 (assets/demo_model) from scratch (one command; CPU is fine).
# scripts/train_demo.sh is the v1 procedure under development (issue 18), which replaces this one
# once its model meets the target.
#
#   bash scripts/train_demo_v0.sh            # about 2.5 hours on 2 CPU cores (stage 1 25 min, stage 2 100 min)
#
# 1. stage 1: pretrain the small DINOv3-structured backbone on phantom slices (hyperct pretrain);
# 2. stage 2: HyperCT training proper, backbone frozen, the paper's protocol (hyperct train): 3 epochs
#    of cosine decay, then the same run resumed to 12 epochs (a warm restart of the cosine schedule,
#    validated every 3 epochs; best epoch by validation mean AUC);
# 3. operating thresholds (Youden) from the validation phantoms, written into the manifest;
# 4. the held-out test: 300 fresh phantoms with seeds never used in training (hyperct evaluate);
# 5. copy the checkpoint into assets/demo_model/ (the model card is written by hand from step 4).
# Everything is seeded: the same command on the same machine gives the same weights.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
CACHE=cache/hyperct-demo

hyperct pretrain --config configs/demo_backbone.yaml --out "$RUNS/demo-backbone" --overwrite
hyperct train --config configs/demo.yaml --out "$RUNS/demo" --overwrite \
  --set "model.backbone_weights=$RUNS/demo-backbone"
hyperct train --resume "$RUNS/demo" --set train.epochs=12
hyperct evaluate --model "$RUNS/demo/best" --data phantom:200:200000 --phantom-matrix 192 --cache "$CACHE" \
  --out "$RUNS/demo/valid-report" --write-thresholds --overwrite
hyperct evaluate --model "$RUNS/demo/best" --data phantom:300:300000 --phantom-matrix 192 --cache "$CACHE" \
  --thresholds model --out "$RUNS/demo/test-report" --overwrite
mkdir -p assets/demo_model
cp "$RUNS/demo/best/manifest.json" "$RUNS/demo/best/model.safetensors" assets/demo_model/
echo "demo model copied to assets/demo_model; test report in $RUNS/demo/test-report"
