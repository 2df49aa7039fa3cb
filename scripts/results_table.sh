#!/usr/bin/env bash
# The README's results table: each preset a user picks, trained on DATA as `birdshield train --preset`
# trains it, measured once on the test split, then `birdshield compare` over the reports.
#
#   scripts/results_table.sh DATA [OUT]      DATA: a data set with a test split; OUT: default runs/results
#
# Rows: original and robust-cpu (clean accuracy, robust accuracy at Linf 2/255 and 4/255), smoothing and
# smoothing-0.5 (the smoothed classifier's accuracy, certified accuracy at L2 radius 0.5 and 1), and
# robust-gpu when a GPU is present. Robust models are attacked with the reference AutoAttack's pair
# (APGD-CE, then APGD-T on 3 targets, 100 steps each); with a GPU, `ROBUST_EVAL=--full` is the stronger
# ensemble. Certification takes SAMPLES noise samples per image (default 1000; 10000 certifies larger radii
# and takes ten times as long). About 6 hours on a 2-core CPU, most of it attacking robust-cpu and
# certifying; well under an hour on a GPU. Each step records that it finished in OUT/done/, and training,
# evaluation and certification resume, so a killed run goes on where it stopped when started again.
# THREADS=N sets birdshield --threads (default: torch's).
set -euo pipefail
D=${1:?usage: scripts/results_table.sh DATA [OUT]}
O=${2:-runs/results}
source "$(dirname "$0")/steps.sh"
read -ra robust_eval <<< "${ROBUST_EVAL:---attacks apgd-ce,apgd-t --steps 100 --targets 3}"
r=$O/reports
attacked() {  # NAME OPTIONS...: train the preset NAME, then attack its test split at 2/255 and 4/255
  local name=$1
  shift
  step "train-$name" bs train "$D" --out "$O/$name" --preset "$name" --resume
  step "evaluate-$name" bs evaluate "$O/$name" "$D" "$@" --eps 2/255,4/255 --corruptions none \
    --noise-std none --out "$r/$name" --resume
}
certified() {  # NAME SIGMA: train the preset NAME, then certify its test split at SIGMA
  step "train-$1" bs train "$D" --out "$O/$1" --preset "$1" --resume
  step "certify-$1" bs certify "$O/$1" "$D" --sigma "$2" --samples "${SAMPLES:-1000}" --alpha 0.001 \
    --out "$r/$1" --resume
}

attacked original --quick
attacked robust-cpu "${robust_eval[@]}"
names=(original robust-cpu) folders=("$r/original" "$r/robust-cpu")
if python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  attacked robust-gpu "${robust_eval[@]}"
  names+=(robust-gpu) folders+=("$r/robust-gpu")
fi
certified smoothing 0.25
certified smoothing-0.5 0.5
names+=(smoothing smoothing-0.5) folders+=("$r/smoothing" "$r/smoothing-0.5")
bs compare --out "$O" --radii 0,0.5,1 --names "$(IFS=,; echo "${names[*]}")" "${folders[@]}"
