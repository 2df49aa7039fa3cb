#!/usr/bin/env bash
# A training recipe trained with two seeds, each model under the full ensemble at Linf 2/255 and 4/255 on
# the test split, the seeds side by side with `compare`. The test split is for the recipe chosen at the
# end: choose between recipes with `birdshield train --cv K` first.
#
#   experiments/recipe_seeds.sh DATA OUT [TRAIN OPTIONS...]
#   e.g. experiments/recipe_seeds.sh ../shared/data/birds-mini runs/robust-cpu --preset robust-cpu
#
# OUT/sN holds seed N's run (history.csv's `seconds` sum to its training time), OUT/reports/sN its report,
# OUT/compare.md the table. Steps are recorded in OUT/done/ and resume, so a killed run goes on.
# SEEDS="0 1 2" changes the seeds; THREADS=N sets birdshield --threads; EVAL="OPTIONS" replaces `--full`,
# e.g. EVAL="--attacks apgd-ce,apgd-t --steps 100 --targets 3", the reference AutoAttack's pair: a screen in
# a fifth of the time. On a 2-core CPU `--full` takes hours per model and eps; on a GPU, minutes.
set -euo pipefail
D=${1:?usage: experiments/recipe_seeds.sh DATA OUT [TRAIN OPTIONS...]}
O=${2:?usage: experiments/recipe_seeds.sh DATA OUT [TRAIN OPTIONS...]}
shift 2
source "$(dirname "$0")/../scripts/steps.sh"

read -ra attacks <<< "${EVAL:---full}"
names=() reports=()
for seed in ${SEEDS:-0 1}; do
  step "train-s$seed" bs train "$D" --out "$O/s$seed" --seed "$seed" --resume "$@"
  step "evaluate-s$seed" bs evaluate "$O/s$seed" "$D" "${attacks[@]}" --eps 2/255,4/255 --corruptions none \
    --noise-std none --out "$O/reports/s$seed" --resume
  names+=("seed $seed") reports+=("$O/reports/s$seed")
done
bs compare --out "$O" --names "$(IFS=,; echo "${names[*]}")" "${reports[@]}"
