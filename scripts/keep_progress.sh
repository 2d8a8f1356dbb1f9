#!/usr/bin/env bash
# Keep a training run's progress in git between sessions (runs/ and cache/ are not committed and do not
# survive a new checkout): copies the run folder's small files -- the backbone, the resume state
# (weights, AdamW moments, random generators), the per-epoch log and the configuration -- into
# progress/<name>/ (PROGRESS=DIR: elsewhere), refusing anything over 16 MB in all (LIMIT_MB=N: another
# limit, e.g. for a stage-2 run of `hyperct train`, whose best/ and last/ hold ~32 MB).
#
#   bash scripts/keep_progress.sh runs/demo-backbone-v1        # then: git add progress/demo-backbone-v1
#   cp -r progress/demo-backbone-v1 runs/ && hyperct pretrain --resume runs/demo-backbone-v1   # continue
set -euo pipefail
run=${1:?usage: keep_progress.sh RUN_FOLDER}
[ -f "$run/last/state.json" ] || { echo "no resume state in $run (last/state.json): nothing to keep" >&2; exit 2; }
run=$(cd "$run" && pwd)
name=$(basename "$run")
dest=${PROGRESS:-$(cd "$(dirname "$0")/.." && pwd)/progress}
size=$(du -sk --exclude='*.log' "$run" | cut -f1)
limit=${LIMIT_MB:-16}
if [ "$size" -gt $((limit * 1024)) ]; then
  echo "$run holds ${size} kB: too large to commit (limit $limit MB); keep it elsewhere" >&2
  exit 2
fi
rm -rf "$dest/$name.tmp" && mkdir -p "$dest/$name.tmp"
cp -r "$run"/. "$dest/$name.tmp/"
find "$dest/$name.tmp" -name '*.log' -delete
rm -rf "$dest/$name" && mv "$dest/$name.tmp" "$dest/$name"
epoch=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['epoch'])" "$dest/$name/last/state.json")
echo "kept $run in $dest/$name ($(du -sh "$dest/$name" | cut -f1)); epoch $epoch"
