#!/usr/bin/env bash
# Train, evaluate and package the embedded demo model v1 (issue 18; one reproducible command).
#
#   bash scripts/train_demo.sh                 # GPU when present (stage 1 and 2: device auto), else CPU
#   GATE=0 bash scripts/train_demo.sh          # go on to stage 2 even if the backbone misses the probe gate
#   SHIP=1 bash scripts/train_demo.sh          # copy into assets/demo_model even if the test target is missed
#   PREPARE_WORKERS=12 bash scripts/train_demo.sh   # phantom-generating processes (default 1: 2 cores)
#   V0=shipped bash scripts/train_demo.sh      # stage 1 v0 = the backbone inside assets/demo_model (the
#                                              # shipped v0.2 froze it: the same weights), not trained again
#
# 1. stage 1: the v0 backbone (configs/demo_backbone.yaml, token and image objectives, ~25 min on 2
#    cores), then stage 1 v1 from it (hyperct pretrain, configs/demo_backbone_v1.yaml): token, image
#    and mean-CLS bag objectives from the finding masks, per-finding balanced loss, phantoms in pairs
#    with a twin lacking one finding, fresh seeds (blocks of 200 pairs from seed 1,000,000,
#    generated in the background, deleted after use).
#    Interrupted? `hyperct pretrain --resume "$RUNS/demo-backbone-v1"` continues on new seeds; more
#    epochs: `--epochs N`. Then rerun this script with STAGE1=skip to go on from the folder as it is.
# 2. the gate: benchmarks/probe_backbone.py (logistic probe on the frozen mean-CLS feature, 800 / 200
#    phantoms) must reach macro >= 0.92 and every finding >= 0.80, else the script stops (GATE=0 skips);
# 3. stage 2: HyperCT training proper, backbone frozen (hyperct train, configs/demo_v1.yaml): the
#    paper's protocol with task draws balanced toward each volume's positive findings, 12 epochs;
# 4. operating thresholds (Youden) from the 200 validation phantoms, written into the manifest;
# 5. the held-out test: 300 fresh phantoms with seeds never used in training (hyperct evaluate);
# 6. copy the checkpoint into assets/demo_model/ only when the test meets the issue's target (macro AUC
#    >= 0.90, every finding >= 0.75) or SHIP=1 (the model card is written by hand from step 5).
# Everything is seeded: on the same machine and device the command gives the same weights (CPU runs
# are bitwise reproducible with the same torch build and thread count; GPU runs are not bitwise).
#
# The shipped v0.2 weights come from the previous procedure, kept as scripts/train_demo_v0.sh
# (configs/demo_backbone.yaml, then configs/demo.yaml for 3 epochs resumed to 12 on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
CACHE=cache/hyperct-demo
BACKBONE="$RUNS/demo-backbone-v1"

if [ "${STAGE1:-run}" != skip ]; then
  if [ "${V0:-train}" = shipped ]; then
    python -c 'import sys
from hyperct.checkpoint import load_checkpoint
from hyperct.network.backbone import save_backbone
save_backbone(load_checkpoint("assets/demo_model", map_location="cpu")[0].backbone, sys.argv[1])' "$RUNS/demo-backbone-v0"
  else
    hyperct pretrain --config configs/demo_backbone.yaml --out "$RUNS/demo-backbone-v0" --overwrite
  fi
  hyperct pretrain --config configs/demo_backbone_v1.yaml --out "$BACKBONE" --overwrite \
    --init "$RUNS/demo-backbone-v0" --set "data.prepare_workers=${PREPARE_WORKERS:-1}"
fi
python benchmarks/probe_backbone.py --backbone "$BACKBONE" --cache "$CACHE" --workers "${PREPARE_WORKERS:-2}" \
  --out "$BACKBONE/probe.json"
if [ "${GATE:-1}" != 0 ]; then
  python - "$BACKBONE/probe.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
mc = r["poolings"]["mean_cls"]
if not r["gate"]["met"]:
    sys.exit(f"probe gate not met: mean-CLS macro {mc['macro_auc']}, lowest finding {mc['min_auc']} "
             "(need 0.92 / 0.80); continue stage 1 with `hyperct pretrain --resume`, or GATE=0")
PY
fi
hyperct train --config configs/demo_v1.yaml --out "$RUNS/demo-v1" --overwrite \
  --set "model.backbone_weights=$BACKBONE"
hyperct evaluate --model "$RUNS/demo-v1/best" --data phantom:200:200000 --phantom-matrix 192 --cache "$CACHE" \
  --out "$RUNS/demo-v1/valid-report" --write-thresholds --overwrite
hyperct evaluate --model "$RUNS/demo-v1/best" --data phantom:300:300000 --phantom-matrix 192 --cache "$CACHE" \
  --thresholds model --out "$RUNS/demo-v1/test-report" --overwrite
if python - "$RUNS/demo-v1/test-report/metrics.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
aucs = [f["auc"] for f in r["findings"].values() if f["auc"] is not None]
overall = r["macro_auc"]["overall"] if isinstance(r["macro_auc"], dict) else r["macro_auc"]
print(f"test macro AUC {overall:.3f}, lowest finding {min(aucs):.3f} (target 0.90 / 0.75)")
sys.exit(0 if overall >= 0.90 and min(aucs) >= 0.75 else 1)
PY
then ship=1; else ship=${SHIP:-0}; fi
if [ "$ship" = 1 ]; then
  mkdir -p assets/demo_model
  cp "$RUNS/demo-v1/best/manifest.json" "$RUNS/demo-v1/best/model.safetensors" assets/demo_model/
  echo "demo model copied to assets/demo_model; test report in $RUNS/demo-v1/test-report"
else
  echo "target not met: assets/demo_model left as it is (SHIP=1 copies anyway); report in $RUNS/demo-v1/test-report"
fi
