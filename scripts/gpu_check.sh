#!/usr/bin/env bash
# The engine's CUDA paths in one run, on a machine with a GPU (each step time-boxed; a failed step
# does not stop the others). Writes into OUT (default gpu-check/), at most 8 files:
#   log.txt                     everything printed, with each step's exit status and seconds
#   gpu_check.json              benchmarks/gpu_check.py: demo model scores, calls and saliency, GPU vs CPU
#   inference_cuda_demo.json    benchmarks/bench_inference.py --config demo --hu-windows --device cuda
#   inference_cuda_vitb16.json  the same for a ViT-B/16 HyperCT (paper size), 25 findings x 55 images
#   training_cuda.json          benchmarks/bench_training.py: a stage-2 step, demo (v1 backbone) and paper config
#   train_log.jsonl             a short `hyperct train` on CUDA (2 epochs, then --resume for a third)
#   pretrain_log.jsonl          `hyperct pretrain --resume` of the shipped demo's stage-1 backbone for one epoch on CUDA
# and last tests/report/test_dtype_cli.py (its bf16-on-a-GPU test is skipped without one).
#
#   bash scripts/gpu_check.sh                  # python3 with torch (CUDA build); hyperct installed
#                                              # (pip install -e .) or, in a bare source tree, on PYTHONPATH=model
#                                              # with assets/ linked in as hyperct/assets for the run
#   WORKERS=14 OUT=/tmp/gc bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
WORK=${WORK:-/tmp/hyperct-gpu-check}
WORKERS=${WORKERS:-14}       # phantom-generating processes
DEVICE=${DEVICE:-cuda}       # DEVICE=cpu runs the same steps on a CPU (to try the script itself)
SMALL=${SMALL:-0}            # SMALL=1: tiny counts (a quick try on a CPU)
ONLY=${ONLY:-}               # ONLY='train|train_resume': only these steps (a rerun)
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$PWD/model${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HYPERCT_NO_PROGRESS=1
# hyperct.assets is the top-level assets/ folder (pyproject's package-dir), which only an install maps;
# a bare source tree gets a link for this run, removed at exit
if ! python3 -c "import hyperct.assets" 2>/dev/null && [ ! -e model/hyperct/assets ]; then
  ln -s ../../assets model/hyperct/assets && trap 'rm -f model/hyperct/assets' EXIT
fi
HCT="python3 -m hyperct.cli.main"  # the `hyperct` command without an installed entry point
step() {  # step NAME SECONDS COMMAND...: run it time-boxed, report its exit status and duration
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  if [ -n "$ONLY" ] && ! [[ $name =~ ^($ONLY)$ ]]; then return 0; fi
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0)) s"
}
if [ "$SMALL" = 1 ]; then
  SCANS=2 TRAIN=16 VALID=8 PAIRS=4 PVALID=4
else
  # phantoms are generated on the CPU first: on a 16-core H200 machine 96 + 16 for `train` and 200
  # pairs for `pretrain` did not fit their limits (2026-12-04, benchmarks/results/gpu_check_h200_log.txt)
  SCANS=8 TRAIN=32 VALID=8 PAIRS=24 PVALID=8
fi
BACKBONE=progress/demo-backbone-v1w-pair-heart  # the shipped demo's stage-1 backbone (epoch 94)
{
  date -u
  nvidia-smi -L 2>/dev/null
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name())"
  step gpu_check 150 python3 benchmarks/gpu_check.py --device "$DEVICE" --scans "$SCANS" --out "$OUT/gpu_check.json"
  step train 75 $HCT train --config configs/demo_v1.yaml --out "$WORK/s2" --overwrite --device "$DEVICE" \
    --set model.backbone_weights="$BACKBONE" --set data.cache_dir="$WORK/cache" \
    --set data.prepare_workers="$WORKERS" --set data.train.count="$TRAIN" --set data.valid.count="$VALID" \
    --set train.epochs=2 --set train.valid_every=1
  step train_resume 45 $HCT train --resume "$WORK/s2" --set train.epochs=3
  cp "$WORK/s2/log.jsonl" "$OUT/train_log.jsonl" 2>/dev/null
  step inference_demo 45 python3 benchmarks/bench_inference.py --config demo --hu-windows --device "$DEVICE" \
    --out "$OUT/inference_cuda_demo.json"
  step inference_vitb16 60 python3 benchmarks/bench_inference.py --config vitb16 --device "$DEVICE" \
    --out "$OUT/inference_cuda_vitb16.json"
  step training_bench 50 sh -c "python3 benchmarks/bench_training.py --config configs/demo_v1.yaml \
--set model.backbone_weights=$BACKBONE --device $DEVICE --micro 8 2 > $WORK/train_demo.json && \
python3 benchmarks/bench_training.py --config configs/paper.yaml --set model.backbone_weights=null \
--device $DEVICE --micro 8 2 1 > $WORK/train_paper.json"
  [ -s "$WORK/train_paper.json" ] && python3 -c "import json, sys; json.dump({'demo_v1': json.load(open(sys.argv[1])), 'paper': json.load(open(sys.argv[2]))}, \
open(sys.argv[3], 'w'), indent=2)" "$WORK/train_demo.json" "$WORK/train_paper.json" "$OUT/training_cuda.json"
  rm -rf "$WORK/pt" && cp -r "$BACKBONE" "$WORK/pt"
  step pretrain 100 $HCT pretrain --resume "$WORK/pt" --until 95 --set device="$DEVICE" \
    --set data.cache_dir="$WORK/cache" --set data.prepare_workers="$WORKERS" \
    --set data.train.count="$PAIRS" --set valid.phantoms="$PVALID"
  cp "$WORK/pt/log.jsonl" "$OUT/pretrain_log.jsonl" 2>/dev/null
  # the test that needs a GPU (skipped elsewhere), with the rest of its file
  step pytest_gpu 90 python3 -m pytest -q -p no:cacheprovider -rfEs tests/report/test_dtype_cli.py
  date -u
} 2>&1 | tee "$OUT/log.txt"
