#!/usr/bin/env bash
# Issue 12's GPU check, sized for one lent GPU and one 9-minute call: trains the named runs side by side on
# one GPU, evaluates each with the --full ensemble (2/255, then 4/255) and cross-checks the robust-cpu runs
# against the reference AutoAttack. Every stage stops by DEADLINE seconds; what finished is packed
# into $OUT/results.tgz (reports, histories, logs; no weights).
#
#   OUT=/tmp/gpu bash scripts/gpu_recipes.sh [RUN...]   # default: robust-gpu-s0 robust-cpu-s0 robust-cpu-s1
#   OUT=/tmp/gpu TINY=1 DEVICE=cpu DATA=SMALL_SET bash scripts/gpu_recipes.sh   # rehearse the script itself
#
# BIRDSHIELD_SHARED is where data/ and peers/ are. On a bare machine the repo's src runs with the weight
# packages carried as wheels in .whl/. Measured on an H200 (session 12): the default three trained side by
# side in 288 and 316 s (Lite1) while Lite2 was stopped at TRAIN_CAP in epoch 19 of 30; the GPU sat near idle
# for the first 4 minutes (teachers, feature caches, first epochs at 33-57 s where later ones took 5-9 s) and
# busy from then on (nvidia-smi dmon in $OUT/dmon.log); --full at 2/255 took 229 s for a Lite1 beside the
# others and 79 s alone, single view (robust-cpu now saves with --tta-flip, which doubles every forward pass).
# robust-gpu alone needs a call of its own: `bash scripts/gpu_recipes.sh
# robust-gpu-s0`.
set -u
export PYTHONUNBUFFERED=1
START=$SECONDS
DEADLINE=${DEADLINE:-540}
TRAIN_CAP=${TRAIN_CAP:-360}  # a training still going then is stopped: its best checkpoint is evaluated
SHARED=${BIRDSHIELD_SHARED:-../shared}
export BIRDSHIELD_SHARED=$SHARED
DATA=${DATA:-$SHARED/data/birds-mini}
RUNS=${RUNS:-/tmp/gpu-runs}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$RUNS/reports"

# A bare machine has no birdshield install: the repo's src and the weight packages carried as wheels.
if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl
    export PYTHONPATH=$PWD/src:/tmp/site
fi
$PY -c "import torch, timm; print(torch.__version__, timm.__version__, torch.cuda.is_available())"
nvidia-smi -L 2>/dev/null && (nvidia-smi dmon -s um -d 15 >"$OUT/dmon.log" 2>&1 &)

if [ "${TINY:-}" ]; then  # rehearsal: one epoch, few images, light attacks
    TRAIN_EXTRA=(--epochs 1 --probe-epochs 1)
    EVAL=(--attacks fgsm,apgd-ce --steps 2 --n-images 8)
    BENCH=(--n-images 8 --steps 2)
else
    TRAIN_EXTRA=()
    EVAL=(--full)
    BENCH=()
fi

left() { local s=$((DEADLINE - (SECONDS - START))); echo $((s > 1 ? s : 1)); }  # timeout 0: none

# pipeline NAME ARGS...: a run in $RUNS/NAME (at most TRAIN_CAP s), then its --full reports at each EPS/255,
# then (CROSS=1) the reference cross-check at 2/255. Each stage gets at most the time left before DEADLINE.
pipeline() {
    local name=$1
    shift
    local log=$OUT/$name.log
    local cap=$(left)
    cap=$((cap < TRAIN_CAP ? cap : TRAIN_CAP))
    BIRDSHIELD_CACHE=/tmp/cache-$name timeout "$cap" $PY -m birdshield.cli train "$DATA" --out "$RUNS/$name" \
        --device "$DEVICE" --workers 3 "${TRAIN_EXTRA[@]}" "$@" >"$log" 2>&1
    echo "$name: train rc=$? at $((SECONDS - START)) s" | tee -a "$log"
    for eps in ${EPS:-2 4}; do
        [ "$(left)" -gt 10 ] || break
        timeout "$(left)" $PY -m birdshield.cli evaluate "$RUNS/$name" "$DATA" "${EVAL[@]}" --eps "$eps/255" \
            --corruptions none --noise-std none --batch-size 150 --device "$DEVICE" \
            --out "$RUNS/reports/$name-full$eps" >>"$log" 2>&1
        echo "$name: evaluate eps $eps/255 rc=$? at $((SECONDS - START)) s" | tee -a "$log"
    done
    if [ "${CROSS:-}" ] && [ "$(left)" -gt 10 ]; then
        timeout "$(left)" $PY benchmarks/bench_autoattack.py "$RUNS/$name" --data "$DATA" --device "$DEVICE" \
            "${BENCH[@]}" >"$OUT/$name-bench.log" 2>&1
        echo "$name: bench_autoattack rc=$? at $((SECONDS - START)) s" | tee -a "$log"
    fi
}

# Runs named PRESET-sSEED, trained in fp32 as a CPU trains except robust-gpu (bf16). robust-cpu-lite0-s*
# needs Lite0's weight wheel carried too (over the 64 MiB a call takes beside birds-mini and Lite1/Lite2's).
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(robust-gpu-s0 robust-cpu-s0 robust-cpu-s1)
for name in "${runs[@]}"; do
    preset=${name%-s*} seed=${name##*-s}
    case $preset in
        robust-gpu) pipeline "$name" --preset "$preset" --seed "$seed" & ;;
        robust-cpu*) CROSS=1 pipeline "$name" --preset "$preset" --no-amp --seed "$seed" & ;;
        *) echo "unknown run $name: robust-gpu-sN, robust-cpu-sN or robust-cpu-lite0-sN" >&2 ;;
    esac
done
wait

tar czf "$OUT/results.tgz" -C "$RUNS" --exclude '*.safetensors' --exclude '*.pt' --exclude '*.npy' \
    --exclude '*.onnx' --exclude examples.png .
ls -la "$OUT"
