#!/usr/bin/env bash
# Download, into .whl/ (git-ignored), the wheels that benchmarks/gpu_check.sh installs on the lent GPU machine.
#
# That machine (Python 3.12, torch with CUDA 13, no network) lacks faiss and albumentations. The set is:
# faiss-cpu, albumentations and the dependencies of both that its image does not hold, at the versions this
# checkout's .venv resolved (the tested ones), or the newest where there is no .venv.
#
# Why faiss-cpu and not a faiss GPU build: PyPI has faiss GPU wheels for CUDA 12 only (faiss-gpu-cu12, 48 MB),
# and they need the CUDA 12 cuBLAS wheel (several hundred MB), which the machine lacks and which exceeds what
# a call may carry (64 MiB). The check then runs k-means with faiss on the CPU cores and kNN with the torch
# engine on the GPU, and reports which backend it used.
#
# Usage: bash benchmarks/fetch_gpu_wheels.sh   (then carry ".whl" in the device run that calls gpu_check.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(faiss-cpu albumentations albucore pydantic pydantic-core annotated-types typing-inspection stringzilla
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

PLATFORMS=()
for tag in manylinux_2_17 manylinux2014 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 \
    manylinux_2_34 manylinux_2_35; do
    PLATFORMS+=(--platform "${tag}_x86_64")
done

rm -rf .whl
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
echo "fetch_gpu_wheels: $(find .whl -type f -name '*.whl' | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/:"
ls .whl
