#!/usr/bin/env bash
# Regenerates every report behind the README's robustness table, then the table itself with `compare`.
#
#   scripts/robustness_table.sh DATA [OUT]      DATA: birds-mini; OUT: runs and reports (default runs/table)
#
# About 4 hours on a 2-core CPU, most of it the two robust trainings (~1 h each), their evaluation and
# `certify`.
# Each step records that it finished in OUT/done/, and training and evaluation resume, so a killed run
# goes on where it stopped when started again. THREADS=N sets birdshield --threads (default: torch's).
set -euo pipefail
D=${1:?usage: scripts/robustness_table.sh DATA [OUT]}
O=${2:-runs/table}
source "$(dirname "$0")/steps.sh"

quick() {  # NAME RUN [OPTIONS...]: evaluate --quick, then the transfer attack from Lite1
  local name=$1 run=$2
  shift 2
  step "$name" bs evaluate "$run" "$D" --quick --out "$O/reports/$name" --resume "$@"
  step "$name-transfer" bs evaluate "$run" "$D" --attacks transfer --surrogate "$O/lite1" \
    --eps 4/255,8/255 --corruptions none --out "$O/reports/$name-transfer" --resume "$@"
}
certify() {  # NAME RUN [OPTIONS...]: randomized smoothing at sigma 0.25
  local name=$1 run=$2
  shift 2
  step "$name" bs certify "$run" "$D" --sigma 0.25 --selection-samples 100 --samples 1000 --alpha 0.001 \
    --out "$O/reports/$name" --resume "$@"
}

step train-lite1 bs train "$D" --out "$O/lite1" --arch tf_efficientnet_lite1 --epochs 1 --resume  # transfer surrogate
step train-standard bs train "$D" --out "$O/standard" --epochs 2 --resume  # what `demo` trains
quick standard "$O/standard"
for defense in "jpeg 75" "bits 4" "median 3"; do
  set -- $defense
  quick "standard-$1" "$O/standard" --defense "$1" --defense-param "$2"
done
step train-noise bs train "$D" --out "$O/noise" --noise-max 0.2 --resume
quick noise "$O/noise"
step train-smoothing bs train "$D" --out "$O/smoothing" --preset smoothing --resume
quick smoothing "$O/smoothing"
certify smoothing-certify "$O/smoothing"
step train-robust bs train "$D" --out "$O/robust" --preset robust-cpu-v1 --ema-decay 0.99 --resume
quick robust "$O/robust"
step train-robust-cpu bs train "$D" --out "$O/robust-cpu" --preset robust-cpu-lite0 --resume  # + its teacher
quick robust-cpu "$O/robust-cpu"

r=$O/reports
bs compare --out "$O" --radii 0.25,0.5 \
  --names "standard,standard,standard + jpeg 75,standard + jpeg 75,standard + bits 4,standard + bits 4,\
standard + median 3,standard + median 3,noise-trained,noise-trained,robust-cpu-v1 + EMA,robust-cpu-v1 + EMA,\
robust-cpu-lite0,robust-cpu-lite0,smoothing (base),smoothing (base),smoothing + certify" \
  "$r/standard" "$r/standard-transfer" "$r/standard-jpeg" "$r/standard-jpeg-transfer" \
  "$r/standard-bits" "$r/standard-bits-transfer" "$r/standard-median" "$r/standard-median-transfer" \
  "$r/noise" "$r/noise-transfer" "$r/robust" "$r/robust-transfer" "$r/robust-cpu" "$r/robust-cpu-transfer" \
  "$r/smoothing" "$r/smoothing-transfer" \
  "$r/smoothing-certify"
