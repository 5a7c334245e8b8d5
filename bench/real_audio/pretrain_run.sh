#!/usr/bin/env bash
# One study run on the real-audio benchmark: pretrain a recipe on the corpus, then probe the export
# (with its random-init twin and the log-mel baseline) on the four labeled tasks.
#   bench/real_audio/pretrain_run.sh NAME RECIPE STEPS SEED [--set key=value ...]
# Data from bench/real_audio/build.py under $REAL_AUDIO_DIR (default /work/data/real_audio); runs and
# probe results go to $REAL_AUDIO_DIR/runs/NAME. One process, OMP_NUM_THREADS threads (default 2).
set -euo pipefail
NAME=$1 RECIPE=$2 STEPS=$3 SEED=$4
shift 4
PY=${PY:-python}
D=${REAL_AUDIO_DIR:-/work/data/real_audio}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
RUNS="$D/runs"
[ -f "$D/corpus_stats.json" ] || $PY -m pretrain stats "$D/shards/corpus/train" --out "$D/corpus_stats.json" >/dev/null
echo "load before: $(cat /proc/loadavg)"
start=$(date +%s)
$PY -m pretrain train --recipe "$RECIPE" \
  --set data.train="$D/shards/corpus/train" --set data.valid="$D/shards/corpus/valid" \
  --set features.stats="$D/corpus_stats.json" --set run.output_dir="$RUNS" --set run.name="$NAME" \
  --set train.max_steps="$STEPS" --set train.seed="$SEED" --set train.val_every="$STEPS" \
  --set train.checkpoint_every=500 "$@"
echo "pretrain wall: $(( $(date +%s) - start )) s for $STEPS steps; load after: $(cat /proc/loadavg)"
if [ "${PROBE:-1}" = 1 ]; then
  tasks=()
  for t in keywords language instrument drums; do tasks+=(--task "$t=$D/shards/$t"); done
  $PY -m finetune probe --model "$RUNS/$NAME/export" "${tasks[@]}" --random-init --baseline logmel \
    --out "$RUNS/$NAME/probe"
fi
