#!/usr/bin/env bash
# Variations of the smoothing-0.5 preset, each trained once and certified at sigma 0.5 on the validation
# split, then compared photo by photo with the first (`compare --paired`): how a change to the preset is
# chosen without touching the test split.
#
#   experiments/smoothing_recipes.sh DATA OUT NAME=[TRAIN OPTIONS]...
#   e.g. experiments/smoothing_recipes.sh ../shared/data/birds-mini runs/s05 preset= \
#          "24-epochs=--epochs 24 --patience 8" "ema=--ema-decay 0.99"
#
# OUT/NAME holds each run, OUT/cert/NAME its certify result (radii from 0.5 up), OUT/compare.md the table
# with the paired counts against the first recipe. Steps are recorded in OUT/done/ and resume.
# SEED=N trains with another seed; SAMPLES=N sets certify's n (default 1,000: about 6 s per photo on a
# 2-core CPU, where each training takes about 20 min); THREADS=N sets birdshield --threads.
set -euo pipefail
usage="usage: experiments/smoothing_recipes.sh DATA OUT NAME=[TRAIN OPTIONS]..."
D=${1:?$usage}
O=${2:?$usage}
shift 2
(($# >= 2)) || { echo "$usage (at least two recipes)" >&2; exit 2; }
source "$(dirname "$0")/../scripts/steps.sh"

names=() certs=()
for recipe in "$@"; do
  name=${recipe%%=*}
  read -ra options <<< "${recipe#*=}"
  step "train-$name" bs train "$D" --out "$O/$name" --preset smoothing-0.5 --seed "${SEED:-0}" --resume \
    "${options[@]}"
  step "certify-$name" bs certify "$O/$name" "$D" --split valid --sigma 0.5 --samples "${SAMPLES:-1000}" \
    --min-radius 0.5 --out "$O/cert/$name" --resume
  names+=("$name") certs+=("$O/cert/$name")
done
bs compare --out "$O" --names "$(IFS=,; echo "${names[*]}")" --radii 0.5,0.75,1 --paired "${certs[@]}"
