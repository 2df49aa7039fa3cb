#!/usr/bin/env bash
# A training recipe as issue 12 judges one: trained with two seeds, each model under the full ensemble at
# Linf 2/255 and 4/255 on the test split, the seeds side by side with `compare`.
#
#   scripts/recipe_seeds.sh DATA OUT [TRAIN OPTIONS...]
#   e.g. scripts/recipe_seeds.sh ../shared/data/birds-mini runs/robust-cpu --preset robust-cpu
#
# OUT/sN holds seed N's run (history.csv's `seconds` sum to its training time), OUT/reports/sN its report,
# OUT/compare.md the table. Steps are recorded in OUT/done/ and resume, so a killed run goes on.
# SEEDS="0 1 2" changes the seeds; THREADS=N sets birdshield --threads; EVAL="OPTIONS" replaces `--full`,
# e.g. EVAL="--attacks apgd-ce,apgd-t --steps 100 --targets 3", the reference AutoAttack's pair: a screen in
# a fifth of the time (29 min at 2/255 on robust-cpu-lite0 seed 0, where it left the same 95/150 as --full).
# On a 2-core CPU a robust-cpu seed trains in 37 min alone (robust-cpu-lite0 in 43; teacher included; about
# an hour beside another job) and takes about 30 min of `evaluate --full` per 32 images per eps at one
# thread (2 h 41 min for 2/255 on 150 photos beside another job, most of it APGD-T on 9 targets and
# Square-5000 on the images still robust): a GPU makes it minutes. Those are single-view models; robust-cpu's
# --tta-flip doubles every attack's cost (its pair at 2/255 and 4/255: 4,894 s against 2,113 s).
set -euo pipefail
D=${1:?usage: scripts/recipe_seeds.sh DATA OUT [TRAIN OPTIONS...]}
O=${2:?usage: scripts/recipe_seeds.sh DATA OUT [TRAIN OPTIONS...]}
shift 2
source "$(dirname "$0")/steps.sh"

read -ra attacks <<< "${EVAL:---full}"
names=() reports=()
for seed in ${SEEDS:-0 1}; do
  step "train-s$seed" bs train "$D" --out "$O/s$seed" --seed "$seed" --resume "$@"
  step "evaluate-s$seed" bs evaluate "$O/s$seed" "$D" "${attacks[@]}" --eps 2/255,4/255 --corruptions none \
    --noise-std none --out "$O/reports/s$seed" --resume
  names+=("seed $seed") reports+=("$O/reports/s$seed")
done
bs compare --out "$O" --names "$(IFS=,; echo "${names[*]}")" "${reports[@]}"
