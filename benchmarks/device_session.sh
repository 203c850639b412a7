#!/usr/bin/env bash
# One device call that measures what only a GPU can measure (speed, and quality at a 2-minute
# budget), in under 8 minutes of an H100/H200 (prepare .device/ first:
# benchmarks/device_prepare.sh). Results go to $OUT.
#   STAGE=main    (default) install, decode, the CUDA tests, gpu_speed (BYOL, batch 256 and 512),
#                 quality_budget BYOL at 120 s on both sides (ResNet-18, 32 px, all images)
#   STAGE=simclr  quality_budget SimCLR at 120 s on both sides (a second call, ~5 min)
#   QUICK=1       a CPU rehearsal of the same commands in seconds (tiny sizes, --device cpu)
# Every step has its own time limit and the script goes on after a failing step.
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:-main}
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" OMP_WAIT_POLICY=PASSIVE
log() { echo "== $(date +%T) $*" | tee -a "$OUT/steps.txt"; }
step() {  # step NAME LIMIT_S COMMAND...: run with a limit, output to $OUT/NAME.txt
  local name=$1 limit=$2; shift 2
  log "$name (limit ${limit}s): $*"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  log "$name: exit $?"
  tail -n 25 "$OUT/$name.txt"
}
if [ "${QUICK:-0}" = 1 ]; then
  device=cpu; budget=6; speed=(--device cpu --width 0.25 --images 256 --steps 2 --warmup 1 --trainer-steps 2
                                --batch-sizes 32 --parts ab)
  quality=(--device cpu --size 32 --train-images 400 --queries 200)
else
  device=cuda; budget=120; speed=(--device cuda --batch-sizes 256 512)
  quality=(--device cuda --size 32 --train-images 0 --queries 0)
fi

python -c "import omegaconf" 2>/dev/null || step install 120 python -m pip install -q --no-index \
    --find-links .device/wheels omegaconf
[ -f /tmp/cifar10/test.npz ] || step decode 120 python .device/decode_cifar10_jpeg.py /tmp/cifar10 \
    --pack .device/cifar10-train-jpeg.npz
python - <<'PY' | tee "$OUT/machine.txt"
import torch, platform
print("torch", torch.__version__, "python", platform.python_version(),
      "cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0))
PY
if [ "$stage" = main ]; then
  [ "$device" = cuda ] && step tests_cuda 120 python -m pytest -q -x -p no:cacheprovider \
      tests/evaluation/test_knn.py tests/engine/test_fastpath.py tests/engine/test_recipes.py tests/data/test_augment.py
  step gpu_speed 120 python benchmarks/gpu_speed.py --data /tmp/cifar10 --methods byol "${speed[@]}" \
      --out "$OUT/gpu_speed.json"
  step quality_byol $((budget * 2 + 90)) python benchmarks/quality_budget.py --data /tmp/cifar10 \
      --methods byol --budget "$budget" "${quality[@]}" --out "$OUT/quality_byol.json"
elif [ "$stage" = simclr ]; then
  step quality_simclr $((budget * 2 + 90)) python benchmarks/quality_budget.py --data /tmp/cifar10 \
      --methods simclr --budget "$budget" "${quality[@]}" --out "$OUT/quality_simclr.json"
fi
log done
