#!/usr/bin/env bash
# Run HERE, before a GPU session: fills .device/ (git-ignored) with what the device machine lacks
# and cannot download: wheels for omegaconf and antlr4-python3-runtime, and the 15 MB CIFAR-10
# pack with its decoder. Then call the device tool with carry [".device"] and
# `bash benchmarks/device_session.sh [STAGE]` (see that script).
#   bash benchmarks/device_prepare.sh [SHARED_DATA_DIR]   (default: ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${1:-../shared/data}
mkdir -p .device/wheels
python3 -m pip wheel -q --no-deps -w .device/wheels omegaconf antlr4-python3-runtime==4.9.3
cp "$shared/cifar10-train-jpeg.npz" "$shared/decode_cifar10_jpeg.py" .device/
du -sh .device
