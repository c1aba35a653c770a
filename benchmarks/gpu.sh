#!/usr/bin/env bash
# Correctness and the speed table on a GPU machine, in under 8 minutes on one H100.
#
#   bash benchmarks/gpu.sh          # on a machine with CUDA and torch preinstalled
#   bash benchmarks/gpu.sh --cpu    # the same steps at smoke size on the CPU (tests this script)
#
# 1. setup: install this package without its dependencies (the machine's torch stays);
#    torchattacks, the PGD reference, is used where importable (the device runs carry it
#    in .venv/lib/python3*/site-packages, which is then put on PYTHONPATH);
# 2. correctness: benchmarks/check_gpu.py (GPU results equal the CPU's within bf16
#    tolerance on a fixed batch: logits, one MAT step's loss, PGD output; PGD keeps delta in
#    fp32 under autocast; no host sync in training PGD);
# 3. the tests that need CUDA (the loader's and the pixels' bits equal the CPU's, an fp32
#    evaluation runs without TF32);
# 4. the speed table: benchmarks/run_all.py --preset gpu (ResNet-18 and WRN-34-10 at batch
#    128, bf16, channels_last, CIFAR-shaped random data: images/s of AT and MAT steps, the
#    fraction of the card's measured bf16 matmul rate, PGD against torchattacks, evaluator).
# Each step has its own time limit so that the whole stays inside 8 minutes; logs go to
# $OUT (the device tool's output folder) or /tmp/mutualat-gpu.
set -u
cd "$(dirname "$0")/.."
LOGS=${OUT:-/tmp/mutualat-gpu}
mkdir -p "$LOGS"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

if [ "${1:-}" = "--cpu" ]; then
    # A CPU (often a busy one) is far slower than the GPU the limits below are set for.
    DEVICE=cpu PRESET=smoke CHECK_ARGS="--batch 8" CHECK_S=900 BENCH_S=900
else
    DEVICE=cuda PRESET=gpu CHECK_ARGS="" CHECK_S=90 BENCH_S=250
    $PY -m pip install -q --no-deps --no-build-isolation -e . >"$LOGS/pip.log" 2>&1 \
        || echo "pip install -e . failed (see pip.log); using PYTHONPATH=src"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
        | tee "$LOGS/nvidia-smi.txt"
fi
TA_SITE=$(ls -d "$PWD"/.venv/lib/python3*/site-packages 2>/dev/null | head -n 1)
export PYTHONPATH="$PWD/src${TA_SITE:+:$TA_SITE}${PYTHONPATH:+:$PYTHONPATH}"
$PY -c "import torch, mutualat; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available()); import torchattacks; print('torchattacks', torchattacks.__version__)" \
    || echo "torchattacks is not importable: the pgd rows will fail, the rest runs"

status=0
echo "== correctness ($DEVICE) =="
timeout $CHECK_S $PY benchmarks/check_gpu.py --device "$DEVICE" $CHECK_ARGS 2>&1 | tee "$LOGS/check.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
echo "== the tests that need CUDA (skipped without it) =="
timeout $CHECK_S $PY -m pytest -q -rs -p no:cacheprovider tests/test_data_loader.py \
    tests/test_precision.py -k cuda 2>&1 | tee "$LOGS/cuda-tests.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
echo "== speed table (preset $PRESET) =="
timeout $BENCH_S $PY benchmarks/run_all.py --preset "$PRESET" --device "$DEVICE" 2>&1 | tee "$LOGS/bench.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
exit $status
