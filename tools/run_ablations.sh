#!/usr/bin/env bash
# Train every CUHK01 ablation recipe (configs/ablations/*.yaml, plus configs/mspcnn_cuhk01.yaml)
# one after the other into runs/ablations/<name>/, then print the table of docs/results.md.
# Usage (repository root, ../shared beside it): bash tools/run_ablations.sh [NAME ...]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  names=(baseline msfl msfl_msgr ce ce_contrastive ce_semi_hard ce_improved_triplet ce_quadruplet ce_soft_hard ce_msml mutual aligned)
  [ -f configs/mspcnn_cuhk01.yaml ] && names+=(mspcnn)
fi
mkdir -p runs/ablations
for name in "${names[@]}"; do
  cfg=configs/ablations/cuhk01_${name}.yaml
  [ "$name" = mspcnn ] && cfg=configs/mspcnn_cuhk01.yaml
  out=runs/ablations/$name
  if [ -f "$out/results.json" ]; then echo "skip $name (done)"; continue; fi
  echo "=== $name ($cfg) $(date -u +%H:%M:%S)"
  extra=()
  [ "$name" = mspcnn ] && extra=(--set train.max_epochs=6 --set train.max_minutes=15)
  $PY -m reidkit.cli train "$cfg" --output "$out" "${extra[@]}" > "runs/ablations/$name.log" 2>&1 \
    || { echo "FAILED $name: see runs/ablations/$name.log"; tail -5 "runs/ablations/$name.log"; }
done
$PY tools/ablation_table.py runs/ablations
