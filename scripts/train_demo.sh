#!/usr/bin/env bash
# Train, evaluate and package the embedded demo model v1 (issue 18; one reproducible command).
#
#   bash scripts/train_demo.sh                 # GPU when present (stage 1 and 2: device auto), else CPU
#   GATE=0 bash scripts/train_demo.sh          # go on to stage 2 even if the backbone misses the probe gate
#   SHIP=1 bash scripts/train_demo.sh          # copy into assets/demo_model even if the test target is missed
#   PREPARE_WORKERS=12 bash scripts/train_demo.sh   # phantom-generating processes (default 1: 2 cores)
#   V0=v02/assets/demo_model bash scripts/train_demo.sh   # stage 1 v0 = the backbone inside the demo
#                 # model v0.2 (it froze it: the same weights), not trained again; v0.2 was shipped until
#                 # v0.3: mkdir v02 && git archive fecca61 assets/demo_model | tar -x -C v02
#   GATE=0 SHIP=1 VERSION=0.10 bash scripts/train_demo.sh
#                                              # the shipped v0.10: the whole procedure, gate missed
#                                              # and target half met, version 0.10 in the copied
#                                              # manifest (the metal arm trained on: the long arm, to
#                                              # epoch 344; stage 2 as v0.7's into runs/demo-v1-long-s3,
#                                              # then copies re-planned to 36 and 48 epochs:
#                                              # runs/demo-v1-long-s3-e36, runs/demo-v1-long-s3-e48)
#   GATE=0 SHIP=1 VERSION=0.9 STAGE2_EPOCHS=36 bash scripts/train_demo.sh
#                                              # v0.9 (shipped before v0.10): the re-plan to 36 only
#   GATE=0 SHIP=1 VERSION=0.8 STAGE2_EPOCHS=24 bash scripts/train_demo.sh
#                                              # v0.8 (shipped before v0.9): stage 2's 24 epochs only
#   GATE=0 SHIP=1 VERSION=0.7 STAGE1_PHASE=metal bash scripts/train_demo.sh
#                                              # v0.7 (shipped before v0.8): the metal arm at epoch
#                                              # 280, stage 2 into runs/demo-v1-metal-s3
#   GATE=0 SHIP=1 VERSION=0.6 STAGE1_PHASE=stem bash scripts/train_demo.sh
#                                              # v0.6 (shipped before v0.7): the stem arm at epoch 204,
#                                              # stage 2 as v0.7's into runs/demo-v1-stem-s3
#   GATE=0 SHIP=1 VERSION=0.5 STAGE1_PHASE=slices bash scripts/train_demo.sh
#                                              # v0.5 (shipped before v0.6): the heart-slices backbone
#                                              # (epoch 160), stage 2 on all 55 images for 12 epochs
#                                              # into runs/demo-v1-hslice
#   GATE=0 SHIP=1 VERSION=0.4.1 STAGE1_PHASE=heart bash scripts/train_demo.sh
#                                              # v0.4.1 (shipped before v0.5): stage 1 without the
#                                              # heart-slices phase, stage 2 into runs/demo-v1 as it ran
#                                              # (validated every 3, no input-stage cache; v0.4's weights,
#                                              # 0.4.1: the nodule gets a 99 % specificity threshold)
#   GATE=0 SHIP=1 STAGE1_PHASE=heart STAGE2_CONFIG=configs/demo_v03.yaml bash scripts/train_demo.sh
#                                              # v0.3 (shipped before v0.4): stage 2 on 800 phantoms, 900 steps
#
# 1. stage 1: the v0 backbone (configs/demo_backbone.yaml, token and image objectives, ~25 min on 2
#    cores), then stage 1 v1 from it as the best backbone so far was trained: the run history kept in
#    progress/demo-backbone-v1w-pair-heart (its log and its pretrain_config.before-epoch-N.yaml),
#    replayed segment by segment with `hyperct pretrain --until EPOCH` (a resume starts a new block of
#    seeds, so the replay stops and resumes where that run did):
#    - v1 (configs/demo_backbone_v1.yaml: token, image and mean-CLS bag objectives from the finding
#      masks, per-finding balanced loss, phantoms in pairs with a twin lacking one finding, fresh
#      seeds in blocks of 200 pairs from seed 1,000,000), 80 epochs planned, stopped after 42;
#    - v1w from it (configs/demo_backbone_v1w.yaml: + HU windows, seeds from 1,002,200), then the
#      segments of STAGE1_SEGMENTS below: the schedule re-planned (--epochs), the pair contrast from
#      epoch 31, the heart-geometry head from epoch 69; 94 epochs (v1 and v1w: ~5 h on 2 cores).
#    The recorded run's A/B arms ran on one thread each and some segments on two, so the replay gives
#    the same procedure and seeds, not bitwise the same weights. Interrupted? Rerun the script: each
#    run goes on from its last whole epoch (on new seeds, as every resume). STAGE1=skip uses the
#    folders as they are.
#    Then the heart-slices phase, in a copy at epoch 94, with per-image heart targets
#    (`optim.heart_slice_loss_weight`) to epoch 160 as progress/demo-backbone-v1w-pair-heart-slices
#    ran (SLICES_SEGMENTS; probe 0.852, ~3 h more on 2 cores). Then two more copies, as
#    progress/window-arm and progress/stem-arm ran (into runs/demo-backbone-window and -stem): at epoch
#    160 a fourth, narrow HU window (-15..105 HU, at zero weight at first; `--add-hu-window`) to epoch
#    172 (~0.5 h), and at 172 a conv stem of width 16 beside the patch embedding (`--add-conv-stem`,
#    output at zero at first, its lr x10) to epoch 204 (STEM_SEGMENTS; probe 0.867, ~1.5 h);
#    STAGE1_PHASE=stem stops there and trains stage 2 on it into runs/demo-v1-stem-s3 (v0.6).
#    STAGE1_PHASE=metal (v0.7) goes on from there in copies as progress/metal-arm ran: the stem arm to
#    epoch 224 (~0.8 h), then a fifth window at the metal end of the input (950..1000 HU) with the
#    schedule re-planned to 280 epochs (~2.2 h; probe 0.880), stage 2 into runs/demo-v1-metal-s3. The
#    default (STAGE1_PHASE=long, the shipped v0.10) goes on from a copy of the metal arm at 280 as
#    progress/long-arm ran: its schedule re-planned to 360 epochs, stopped after 317 and 333, there
#    re-planned to end at 344 (~3.5 h on 2 cores; probe 0.889), stage 2 into runs/demo-v1-long-s3 (and
#    runs/demo-v1-long-s3-e36 and -e48, step 3).
#    STAGE1_PHASE=slices stops at epoch 160 and
#    trains stage 2 on that backbone into runs/demo-v1-hslice (v0.5); STAGE1_PHASE=heart stops at
#    epoch 94 and trains stage 2 on that backbone into runs/demo-v1 as v0.4.1's ran.
# 2. the gate: benchmarks/probe_backbone.py (logistic probe on the frozen mean-CLS feature, 800 / 200
#    phantoms) must reach macro >= 0.92 and every finding >= 0.80, else the script stops (GATE=0 skips);
# 3. stage 2: HyperCT training proper, backbone frozen (hyperct train, configs/demo_v1.yaml): the
#    paper's protocol with task draws balanced toward each volume's positive findings, 12 epochs (3,600
#    steps, ~3.3 s each measured on one CPU thread beside another job: ~3.3 h, plus four validations of
#    ~12 min); a rerun resumes an interrupted one; STAGE2_CONFIG=FILE trains FILE into runs/<its name>
#    instead (configs/demo_v03.yaml: the shipped v0.3, 800 phantoms, 900 steps). v0.5's run: 2.0 h on 2
#    cores with the input-stage cache (configs/demo_v1.yaml), one validation of ~8 min. v0.6's, v0.7's,
#    v0.8's, v0.9's and v0.10's (STAGE1_PHASE=stem, metal and the default, long) add `train.image_stride=3` (each sample reads
#    every 3rd of its 55 images from a random offset: a step ~3x cheaper) and twice the epochs (24,
#    7,200 steps), validated after 12 and 24: 1.6-1.8 h on 2 cores; the long phase's (v0.10) goes on in
#    a copy with its cosine schedule re-planned to 36 epochs (a warm restart; validated after 36; ~1.3 h
#    more on 2 cores), then in a second copy re-planned to 48 (~0.8 h alone); STAGE2_EPOCHS=36 stops
#    after the first (v0.9), STAGE2_EPOCHS=24 before it (v0.8);
# 4. operating thresholds from the 200 validation phantoms (Youden; 99 % specificity for a finding whose
#    AUC there is below 0.70 or not above chance: hyperct evaluate --min-auc), written into the manifest;
# 5. the held-out test: 300 fresh phantoms with seeds never used in training (hyperct evaluate);
# 6. copy the checkpoint into assets/demo_model/ only when the test meets the issue's target (macro AUC
#    >= 0.90, every finding >= 0.75) or SHIP=1 (VERSION=X.Y then sets its model_version; the model
#    card is written by hand from step 5).
# Everything is seeded: on the same machine and device the command gives the same weights (CPU runs
# are bitwise reproducible with the same torch build and thread count; GPU runs are not bitwise).
#
# The shipped v0.2 weights come from the previous procedure, kept as scripts/train_demo_v0.sh
# (configs/demo_backbone.yaml, then configs/demo.yaml for 3 epochs resumed to 12 on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
CACHE=cache/hyperct-demo
BACKBONE="$RUNS/demo-backbone-v1w-pair-heart"  # stage 1 v1 to epoch 94 (v0.4.1's backbone; v0.5's goes on in $SLICES, v0.6's in $STEM, v0.7's in $METAL, v0.8's to v0.10's in $LONG)
STAGE2_CONFIG=${STAGE2_CONFIG:-configs/demo_v1.yaml}
STAGE2="$RUNS/$(basename "$STAGE2_CONFIG" .yaml | tr _ -)"  # configs/demo_v1.yaml -> runs/demo-v1
PHASE=${STAGE1_PHASE:-long}
STAGE2_EPOCHS=${STAGE2_EPOCHS:-48}  # the long phase's stage 2: 24 epochs, then re-planned to 36 and 48 (below)
case "$STAGE2_EPOCHS" in 24 | 36 | 48) ;; *) echo "STAGE2_EPOCHS must be 24, 36 or 48, not '$STAGE2_EPOCHS'" >&2; exit 2 ;; esac
case "$PHASE" in heart | slices | stem | metal | long) ;; *) echo "STAGE1_PHASE must be heart, slices, stem, metal or long, not '$PHASE'" >&2; exit 2 ;; esac
# reaches P: the chosen phase is P or a later one (each phase trains what the one before it did, then goes on)
reaches() {
  local order=" heart slices stem metal long "
  local chosen=${order%% "$PHASE" *} wanted=${order%% "$1" *}
  [ ${#chosen} -ge ${#wanted} ]
}
STAGE2_SETTINGS=()
if [ "$PHASE" = stem ] || [ "$PHASE" = metal ] || [ "$PHASE" = long ]; then  # v0.6's to v0.10's stage 2: every 3rd image of a volume per sample, twice the epochs
  STAGE2="$STAGE2-$PHASE-s3"
  STAGE2_SETTINGS=(--set train.image_stride=3 --set train.epochs=24 --set train.valid_every=12)
elif [ "$PHASE" = slices ]; then
  STAGE2="$STAGE2-hslice"
else  # v0.4.1's and v0.3's stage 2 as they ran
  STAGE2_SETTINGS=(--set train.embedding_cache=off --set train.valid_every=3)
fi

# The epoch a stage-1 run folder has reached (0: none yet).
reached() {
  python - "$1" <<'PY'
import json, sys
try:
    print(int(json.load(open(sys.argv[1] + "/last/state.json"))["epoch"]))
except (OSError, ValueError, KeyError, TypeError):
    print(0)
PY
}
# segment RUN UNTIL EPOCHS [--set FIELD=VALUE ...]: train RUN on to epoch UNTIL, its schedule planned
# for EPOCHS (nothing when it is there already); settings given stay for the later segments.
segment() {
  local run=$1 until=$2 epochs=$3
  shift 3
  if [ "$(reached "$run")" -lt "$until" ]; then
    hyperct pretrain --resume "$run" --until "$until" --epochs "$epochs" \
      --set "data.prepare_workers=${PREPARE_WORKERS:-1}" "$@"
  fi
}
# replay RUN SEGMENTS: each line "UNTIL EPOCHS [--set FIELD=VALUE ...]" of SEGMENTS as a segment of RUN.
replay() {
  local run=$1 until epochs settings
  while read -r until epochs settings; do
    [ -n "$until" ] || continue
    # shellcheck disable=SC2086  # (the settings are words)
    segment "$run" "$until" "$epochs" $settings
  done <<< "$2"
}
# copy_unless_past FROM RUN EPOCH: RUN becomes a fresh copy of FROM unless it has finished an epoch past EPOCH.
copy_unless_past() {
  [ "$(reached "$2")" -gt "$3" ] || { rm -rf "$2" && cp -r "$1" "$2"; }
}
# arm FROM RUN EPOCH UNTIL EPOCHS OPTION...: RUN = a copy of run FROM at EPOCH changed by the `hyperct
# pretrain --resume` OPTIONs (--add-hu-window, --add-conv-stem, --set), trained to UNTIL with its
# schedule planned for EPOCHS; a copy that has not finished an epoch past EPOCH is made again (the
# change altered it already).
arm() {
  local from=$1 run=$2 epoch=$3 until=$4 epochs=$5
  shift 5
  if [ "$(reached "$run")" -le "$epoch" ]; then
    rm -rf "$run" && cp -r "$from" "$run"
    hyperct pretrain --resume "$run" "$@" --epochs "$epochs" --until "$until" \
      --set "data.prepare_workers=${PREPARE_WORKERS:-1}" --set data.keep_blocks=false
  fi
}
# After v1w's first 7 epochs (40 planned): UNTIL EPOCHS SETTINGS, as progress/demo-backbone-v1w-pair-heart ran.
STAGE1_SEGMENTS="
30 30
40 60 --set optim.pair_loss_weight=1.0
57 80
58 80
68 80
74 100 --set optim.heart_loss_weight=3.0
94 100
"
# The heart-slices phase: from epoch 94 of that run, in a copy, as progress/demo-backbone-v1w-pair-heart-slices ran.
SLICES="$RUNS/demo-backbone-v1w-pair-heart-slices"
SLICES_SEGMENTS="
110 120 --set optim.heart_slice_loss_weight=3.0
142 160
160 160
"
# The window and stem arms (STAGE1_PHASE=stem, v0.6's backbone): copies at epoch 160 and
# 172, as progress/window-arm and progress/stem-arm ran; the stem arm stopped after 191 and 204 (the
# kept run went on after 204: these folders are the script's own, so a continued runs/stem-arm is not
# taken for v0.6's backbone).
WINDOW="$RUNS/demo-backbone-window"
STEM="$RUNS/demo-backbone-stem"
STEM_SEGMENTS="
191 240
204 240
"
# The metal arm (STAGE1_PHASE=metal): the stem arm went on from 204 to 224 (in a copy here), then a copy
# at 224 given a fifth window, as progress/metal-arm ran to epoch 280.
STEM_ON="$RUNS/demo-backbone-stem-224"
METAL="$RUNS/demo-backbone-metal"
# The long arm (STAGE1_PHASE=long): the metal arm's epoch 280 in a copy, its schedule re-planned to 360
# epochs, as progress/long-arm ran: stopped after 317 and 333, re-planned at 333 to end at 344.
LONG="$RUNS/demo-backbone-long"
LONG_SEGMENTS="
333 360
344 344
"

if [ "${STAGE1:-run}" != skip ]; then
  if [ "$(reached "$RUNS/demo-backbone-v1")" = 0 ]; then
    if [ -n "${V0:-}" ]; then
      python -c 'import sys
from hyperct.checkpoint import load_checkpoint, read_manifest
if read_manifest(sys.argv[1]).version != "0.2":
    sys.exit(f"V0={sys.argv[1]} is not the demo model v0.2 (whose frozen backbone is stage 1 v0); "
             "get it with: mkdir v02 && git archive fecca61 assets/demo_model | tar -x -C v02")
from hyperct.network.backbone import save_backbone
save_backbone(load_checkpoint(sys.argv[1], map_location="cpu")[0].backbone, sys.argv[2])' "$V0" "$RUNS/demo-backbone-v0"
    else
      hyperct pretrain --config configs/demo_backbone.yaml --out "$RUNS/demo-backbone-v0" --overwrite
    fi
    hyperct pretrain --config configs/demo_backbone_v1.yaml --out "$RUNS/demo-backbone-v1" --overwrite \
      --init "$RUNS/demo-backbone-v0" --until 42 --set "data.prepare_workers=${PREPARE_WORKERS:-1}"
  fi
  segment "$RUNS/demo-backbone-v1" 42 80
  if [ "$(reached "$BACKBONE")" = 0 ]; then
    hyperct pretrain --config configs/demo_backbone_v1w.yaml --out "$BACKBONE" --overwrite \
      --init "$RUNS/demo-backbone-v1" --until 7 --set "data.prepare_workers=${PREPARE_WORKERS:-1}"
  fi
  segment "$BACKBONE" 7 40
  replay "$BACKBONE" "$STAGE1_SEGMENTS"
  if reaches slices; then
    copy_unless_past "$BACKBONE" "$SLICES" 0
    replay "$SLICES" "$SLICES_SEGMENTS"
  fi
  if reaches stem; then
    # the window arm: a narrow soft-tissue window (-15..105 HU, at zero weight at first) from 160
    arm "$SLICES" "$WINDOW" 160 172 210 --add-hu-window -15 105
    segment "$WINDOW" 172 210
    # the stem arm: a conv stem of width 16 (output at zero at first, lr x10) from 172
    arm "$WINDOW" "$STEM" 172 191 240 --add-conv-stem 16 --set optim.stem_lr_factor=10
    replay "$STEM" "$STEM_SEGMENTS"
  fi
  if reaches metal; then
    # the stem arm went on to 224 (in a copy: $STEM stays v0.6's backbone), then the metal arm: a
    # window at the metal end of the input (950..1000 HU, at zero weight at first) from 224, the
    # schedule re-planned to 280 epochs
    copy_unless_past "$STEM" "$STEM_ON" 204
    segment "$STEM_ON" 224 240
    arm "$STEM_ON" "$METAL" 224 280 280 --add-hu-window 950 1000
    segment "$METAL" 280 280
  fi
  if reaches long; then
    arm "$METAL" "$LONG" 280 317 360
    replay "$LONG" "$LONG_SEGMENTS"
  fi
fi
case "$PHASE" in slices) BACKBONE=$SLICES ;; stem) BACKBONE=$STEM ;; metal) BACKBONE=$METAL ;; long) BACKBONE=$LONG ;; esac
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
if [ -f "$STAGE2/last/state.json" ]; then  # an interrupted stage 2 goes on (delete the folder to restart it)
  hyperct train --resume "$STAGE2"
else
  hyperct train --config "$STAGE2_CONFIG" --out "$STAGE2" --overwrite \
    --set "model.backbone_weights=$BACKBONE" ${STAGE2_SETTINGS[@]+"${STAGE2_SETTINGS[@]}"}
fi
# The long phase's stage 2 goes on (v0.9, v0.10): after its 24 epochs, a copy resumed with the cosine
# schedule re-planned to 36 epochs (a warm restart from lr 7.9e-5), as progress/demo-v1-long-s3-e36 ran,
# then a copy of that at 36 re-planned to 48 (from lr 4.9e-5), as progress/demo-v1-long-s3-e48 ran; each
# re-plan in a copy of the run before it, so the 24-epoch run stays v0.8's and the 36-epoch one v0.9's.
# STAGE2_EPOCHS=24 stops there (v0.8), 36 after the first re-plan (v0.9), 48 is the default (v0.10).
FINAL=$STAGE2
if [ "$PHASE" = long ]; then
  from=24
  for epochs in 36 48; do  # the re-plans the kept runs went through
    [ "$epochs" -le "$STAGE2_EPOCHS" ] || break
    run="$STAGE2-e$epochs"
    copy_unless_past "$FINAL" "$run" "$from"  # reports come along; the final run's are rewritten below
    hyperct train --resume "$run" --set "output_dir=$run" --set "train.epochs=$epochs" --set train.valid_every=12
    FINAL=$run from=$epochs
  done
fi
hyperct evaluate --model "$FINAL/best" --data phantom:200:200000 --phantom-matrix 192 --cache "$CACHE" \
  --out "$FINAL/valid-report" --write-thresholds --overwrite
hyperct evaluate --model "$FINAL/best" --data phantom:300:300000 --phantom-matrix 192 --cache "$CACHE" \
  --thresholds model --out "$FINAL/test-report" --overwrite
if python - "$FINAL/test-report/metrics.json" <<'PY'
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
  cp "$FINAL/best/manifest.json" "$FINAL/best/model.safetensors" assets/demo_model/
  if [ -n "${VERSION:-}" ]; then  # shipped below the target: an interim version, not the config's "1.0"
    python -c 'import sys
from hyperct.checkpoint import update_manifest
update_manifest(sys.argv[1], model_version=sys.argv[2])' assets/demo_model "$VERSION"
  fi
  echo "demo model copied to assets/demo_model; test report in $FINAL/test-report"
else
  echo "target not met: assets/demo_model left as it is (SHIP=1 copies anyway); report in $FINAL/test-report"
fi
