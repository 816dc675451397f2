#!/usr/bin/env bash
# Download, into .whl/ (git-ignored), the wheels that benchmarks/gpu_check.sh installs on the lent GPU machine.
#
# That machine (Python 3.12, torch with CUDA 13, no network) lacks faiss and albumentations. The set is
# albumentations and the dependencies its image does not hold, at the versions this checkout's .venv resolved
# (the tested ones; the newest where there is no .venv), and a faiss:
#
#   bash benchmarks/fetch_gpu_wheels.sh              faiss-cpu (19 MB): k-means on the CPU cores, kNN with torch
#   bash benchmarks/fetch_gpu_wheels.sh --faiss-gpu  faiss-cuda 1.14.1.post4 (99 MB, CUDA 13, uses the CUDA
#                                                    runtime and cuBLAS wheels the image has) for faiss on the GPU
#
# A device call carries at most 64 MiB, so --faiss-gpu splits the faiss wheel in two: the first half goes to
# .whl-first/, the rest with the other wheels to .whl/. Two calls, the second within the 30 s the machine stays
# warm: one with carry [".whl-first"] and the command `true` (the folder stays there), then one with carry
# [".whl"] running gpu_check.sh, which joins the halves and checks them against .whl/faiss-split.txt.
# (faiss' own GPU wheels, faiss-gpu-cu12, are for CUDA 12 and need its cuBLAS wheel, several hundred MB.)
set -euo pipefail
cd "$(dirname "$0")/.."

FAISS_GPU_WHEEL="faiss-cuda==1.14.1.post4"
case "${1:-}" in
    "") FAISS=(faiss-cpu) ;;
    --faiss-gpu) FAISS=() ;;
    *) echo "usage: bash benchmarks/fetch_gpu_wheels.sh [--faiss-gpu]" >&2; exit 2 ;;
esac
PACKAGES=(${FAISS[@]+"${FAISS[@]}"} albumentations albucore pydantic pydantic-core annotated-types typing-inspection stringzilla
    simsimd)
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi

# name==version for each package the venv has, the bare name otherwise
mapfile -t SPECS < <("$PY" - "${PACKAGES[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name)
EOF
)
if [ "${#SPECS[@]}" -ne "${#PACKAGES[@]}" ]; then
    echo "fetch_gpu_wheels: $PY could not list the package versions" >&2
    exit 1
fi
[ "${1:-}" = --faiss-gpu ] && SPECS+=("$FAISS_GPU_WHEEL")

PLATFORMS=()
for tag in manylinux_2_17 manylinux2014 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 \
    manylinux_2_34 manylinux_2_35; do
    PLATFORMS+=(--platform "${tag}_x86_64")
done

rm -rf .whl .whl-first
mkdir -p .whl
for spec in "${SPECS[@]}"; do
    if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d .whl "$spec" 2>.whl/pip.err; then
        echo "fetch_gpu_wheels: no Python 3.12 x86-64 wheel of $spec could be downloaded:" >&2
        grep -v '^WARNING' .whl/pip.err >&2 || true
        exit 1
    fi
done
rm -f .whl/pip.err

if [ "${1:-}" = --faiss-gpu ]; then
    wheel=$(cd .whl && ls faiss_cuda-*.whl)
    mkdir -p .whl-first
    split -n 2 -d ".whl/$wheel" ".whl/$wheel.part-"
    mv ".whl/$wheel.part-00" .whl-first/
    echo "$wheel $(sha256sum ".whl/$wheel" | cut -d' ' -f1)" >.whl/faiss-split.txt
    rm ".whl/$wheel"
fi
echo "fetch_gpu_wheels: $(du -sh .whl | cut -f1) in .whl/:"
ls .whl
if [ -d .whl-first ]; then echo "and $(du -sh .whl-first | cut -f1) in .whl-first/:"; ls .whl-first; fi
