#!/usr/bin/env bash
# `make demo`: the whole pipeline on the built-in synthetic corpus.
# synth -> shard -> inspect -> stats -> pretrain -> export -> fine-tune (probe + full) vs random init
# -> the linear-evaluation suite (every layer; random init and log-mel baselines).
set -euo pipefail
PY=${PY:-.venv/bin/python}
D=${DEMO_DIR:-demo}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$1" "$(( $(date +%s) - start ))" >&2; }

# Every run starts afresh: the corpus is rewritten, the shards are made again (--overwrite removes only
# what the previous plan wrote) and the previous runs are removed.
rm -rf "$D/runs"
step "synthesize the demo corpus"
$PY -m data_prep synth "$D/corpus" --clips 960 --seed 0
step "shard it"
$PY -m data_prep shard "$D/corpus" "$D/shards" --samples-per-shard 32 --workers 2 --seed 0 --overwrite
step "inspect the shards"
$PY -m data_prep inspect "$D/shards"
step "fbank statistics of the training set"
$PY -m pretrain stats "$D/shards/train" --out "$D/stats.json" >/dev/null
step "pretrain (recipes/pretrain/demo.toml)"
# On CPU, two ranks with half the cores each train this small model ~1.3x faster than one process
# using all of them (bench/RESULTS.md); the global batch stays 32. On a GPU: one process.
if $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  PRETRAIN=("$PY" -m pretrain train)
elif [ "$(nproc)" -ge 2 ]; then
  threads=$(( $(nproc) / 2 ))
  PRETRAIN=(env OMP_NUM_THREADS="$threads" ACCELERATE_USE_CPU=1 "$PY" -m accelerate.commands.launch
            --multi_gpu --num_processes 2 --num_machines 1 -m pretrain train
            --set train.batch_size=16 --set data.num_workers="$(( threads > 1 ? 1 : 0 ))")
else
  PRETRAIN=("$PY" -m pretrain train)
fi
"${PRETRAIN[@]}" --recipe recipes/pretrain/demo.toml \
  --set data.train="$D/shards/train" --set data.valid="$D/shards/valid" \
  --set features.stats="$D/stats.json" --set run.output_dir="$D/runs"
if [ -f finetune/train.py ]; then
  step "fine-tune: pretrained vs random init"
  $PY -m finetune compare --recipe recipes/finetune/demo.toml --encoder "$D/runs/demo/export" \
    --set data.train="$D/shards/train" --set data.valid="$D/shards/valid" --set data.test="$D/shards/test" \
    --set run.output_dir="$D/runs"
  step "linear evaluation: every layer, pretrained vs random init vs log-mel (finetune probe)"
  $PY -m finetune probe --model "$D/runs/demo/export" --task demo="$D/shards" --random-init --baseline logmel \
    --out "$D/runs/probe"
fi
step "done"
