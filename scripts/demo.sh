#!/usr/bin/env bash
# `make demo`: the whole pipeline on the built-in synthetic corpus.
# synth -> shard -> inspect -> stats -> pretrain -> export -> fine-tune (probe + full) vs random init.
set -euo pipefail
PY=${PY:-.venv/bin/python}
D=${DEMO_DIR:-demo}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$1" "$(( $(date +%s) - start ))" >&2; }

step "synthesize the demo corpus"
[ -f "$D/corpus/manifest.csv" ] || $PY -m data_prep synth "$D/corpus" --clips 480 --seed 0
step "shard it"
$PY -m data_prep shard "$D/corpus" "$D/shards" --samples-per-shard 32 --workers 2 --seed 0
step "inspect the shards"
$PY -m data_prep inspect "$D/shards"
step "fbank statistics of the training set"
$PY -m pretrain stats "$D/shards/train" --out "$D/stats.json" >/dev/null
step "pretrain (recipes/pretrain/demo.toml)"
$PY -m pretrain train --recipe recipes/pretrain/demo.toml \
  --set data.train="$D/shards/train" --set data.valid="$D/shards/valid" \
  --set features.stats="$D/stats.json" --set run.output_dir="$D/runs"
if [ -f finetune/train.py ]; then
  step "fine-tune: pretrained vs random init"
  $PY -m finetune compare --recipe recipes/finetune/demo.toml --encoder "$D/runs/demo/export" \
    --set data.train="$D/shards/train" --set data.valid="$D/shards/valid" --set data.test="$D/shards/test" \
    --set run.output_dir="$D/runs"
fi
step "done"
