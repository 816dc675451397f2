#!/usr/bin/env bash
# The issue-6 GPU check in one script of at most 8 minutes; it prints one JSON object and writes it to
# $OUT/gpu_check.json when OUT is set. Steps, each under `timeout` (a failing or slow step is reported, never
# fatal):
#   env         torch, CUDA, GPU, faiss build, CPU count
#   cuda_tests  the cuda-marked tests (pytest -m cuda): sync-free training step, kNN engines, bf16/fp16 epochs
#   sop         a synthetic JPEG dataset in the real SOP layout (benchmarks/make_sop_like.py)
#   train_step  ResNet-50 training images/s at 224 px, bf16, channels-last, against the bare backbone
#   loader      the real make_train_loader over that dataset, default train transform, one worker per core
#   recluster   extraction and faiss-GPU k-means with retries and matching at SOP scale (bench_recluster.py)
#   eval        benchmarks/bench_eval.py (SOP-scale kNN and metrics), if that file exists
# Wheels in .whl/ (benchmarks/fetch_gpu_wheels.sh downloads them) are installed to /tmp/site first.
#
# Usage (from anywhere):
#   bash benchmarks/gpu_check.sh                       # on the GPU machine
#   GPU_CHECK_QUICK=1 bash benchmarks/gpu_check.sh     # tiny sizes: a smoke test on any CPU machine
# PYTHON overrides the interpreter (default: .venv/bin/python if present, else python3);
# GPU_CHECK_LIMIT_S the total time limit in seconds (default 470).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

START=$(date +%s)
LIMIT=${GPU_CHECK_LIMIT_S:-470}
QUICK=${GPU_CHECK_QUICK:-0}
NPROC=$(nproc)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi

log() { echo "[gpu_check $(($(date +%s) - START))s] $*" >&2; }

# step NAME SECONDS COMMAND...: COMMAND under timeout (capped by the time left); keeps rc, seconds and output.
step() {
    local name=$1 budget=$2
    shift 2
    local left=$((LIMIT - ($(date +%s) - START) - 10))
    ((budget > left)) && budget=$left
    if ((budget < 5)); then
        echo "not run: the time limit of ${LIMIT} s is used up" >"$WORK/$name.err"
        echo 124 >"$WORK/$name.rc"
        echo 0 >"$WORK/$name.s"
        log "$name: skipped (no time left)"
        return
    fi
    local begin
    begin=$(date +%s)
    timeout -k 5 "$budget" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"
    echo $? >"$WORK/$name.rc"
    echo $(($(date +%s) - begin)) >"$WORK/$name.s"
    log "$name: exit $(cat "$WORK/$name.rc") after $(cat "$WORK/$name.s") s (budget $budget s)"
}

# ------------------------------------------------------------------ install carried wheels
mkdir -p "$WORK/wheels"
if [ -f .whl/faiss-split.txt ]; then  # the faiss GPU wheel in two halves: fetch_gpu_wheels.sh --faiss-gpu
    step join 30 bash -c 'read -r wheel sha <.whl/faiss-split.txt &&
        cat ".whl-first/$wheel.part-00" ".whl/$wheel.part-01" >"$1/$wheel" &&
        [ "$(sha256sum "$1/$wheel" | cut -d" " -f1)" = "$sha" ] && echo "{\"joined\": \"$wheel\"}" ||
        { echo "cannot join $wheel: carry .whl-first in a call just before this one" >&2; rm -f "$1/$wheel"; exit 1; }' \
        join "$WORK/wheels"
fi
if compgen -G ".whl/*.whl" >/dev/null || compgen -G "$WORK/wheels/*.whl" >/dev/null; then
    step install 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site $(compgen -G ".whl/*.whl") $(compgen -G "$WORK/wheels/*.whl")
    [ "$(cat "$WORK/install.rc")" = 0 ] && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

# ------------------------------------------------------------------ environment
step env 60 "$PY" - <<'EOF'
import importlib.util, json, os, platform, sys
import torch
sys.path.insert(0, ".")
from lib.faiss_backend import describe_faiss, faiss_gpu_count
cuda = torch.cuda.is_available()
print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
    "gpu": torch.cuda.get_device_name(0) if cuda else None, "cpu_count": os.cpu_count(),
    "faiss": describe_faiss(), "faiss_gpus": faiss_gpu_count(),
    "albumentations": importlib.util.find_spec("albumentations") is not None,
    "device": "cuda" if cuda else "cpu",
    "backend": "faiss-gpu" if cuda and faiss_gpu_count() > 0 else "faiss",
}))
EOF
DEVICE=$(sed -n 's/.*"device": "\([a-z]*\)".*/\1/p' "$WORK/env.out")
BACKEND=$(sed -n 's/.*"backend": "\([a-z-]*\)".*/\1/p' "$WORK/env.out")
DEVICE=${DEVICE:-cpu}
BACKEND=${BACKEND:-faiss}
GPU_FLAGS=()
[ "$DEVICE" = cuda ] && GPU_FLAGS=(--amp bf16 --channels-last)
log "device $DEVICE, k-means backend $BACKEND, quick=$QUICK"

# ------------------------------------------------------------------ correctness on the device first
step cuda_tests 120 "$PY" - <<'EOF'
"""The cuda-marked tests (tests/devices.py): pytest's output to stderr, a JSON summary to stdout."""
import contextlib, json, sys
import pytest

class Outcomes:
    def __init__(self):
        self.by_test = {}

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            self.by_test[report.nodeid] = report.outcome

outcomes = Outcomes()
with contextlib.redirect_stdout(sys.stderr):
    code = int(pytest.main(["-q", "-p", "no:cacheprovider", "-m", "cuda", "-rfs", "tests"], plugins=[outcomes]))
counts = {state: sum(v == state for v in outcomes.by_test.values()) for state in ("passed", "failed", "skipped")}
failed = sorted(name for name, state in outcomes.by_test.items() if state == "failed")
print(json.dumps({"pytest_exit_code": code, **counts, "failed_tests": failed}))
sys.exit(0 if code in (0, 5) and not failed else 1)
EOF

# ------------------------------------------------------------------ sizes
if [ "$QUICK" = 1 ]; then
    SOP_ARGS=(--train-images 200 --eval-images 40 --size 96)
    TRAIN_ARGS=(--arch resnet18 --size 32 --batch 16 --steps 1 --rounds 2 --warmup 1)
    LOADER_ARGS=(64 1)  # crop, epochs
    RECLUSTER_ARGS=(--n 3000 --dim 64 --ks 2,4 --extract-images 32 --arch resnet18 --size 32)
else
    SOP_ARGS=(--train-images 4000 --eval-images 400 --size 256)
    TRAIN_ARGS=(--arch resnet50 --size 224 --batch 80 --steps 20 --rounds 7 --warmup 5)
    LOADER_ARGS=(224 3)
    RECLUSTER_ARGS=(--arch resnet50 --size 224 --extract-images 10000 --eval-batch-size 256)
fi

# ------------------------------------------------------------------ steps
step sop 60 "$PY" benchmarks/make_sop_like.py "$WORK/data" "${SOP_ARGS[@]}" --workers "$NPROC"

step train_step 120 "$PY" benchmarks/bench_train_step.py --device "$DEVICE" "${TRAIN_ARGS[@]}" "${GPU_FLAGS[@]}"

step loader 60 "$PY" - "$WORK/data" "$NPROC" "${LOADER_ARGS[@]}" <<'EOF'
"""Images/s of the real training loader: adaptbalanced plan (B 80, S 2), default transform, one worker a core."""
import json, sys, time
import numpy as np
import torch
sys.path.insert(0, ".")
from dataset.base import ImageDataset
from dataset.cluster_sampler import ClusterBatchPlanner
from dataset.loader import make_train_loader
from dataset.sop import load_sop
from dataset.transforms import build_train_transform

torch.multiprocessing.set_start_method("fork", force=True)  # this script comes from stdin
root, workers, crop, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
train = load_sop(root).splits["train"]
dataset = ImageDataset(train, build_train_transform(None, crop * 8 // 7, crop, "sop"))
planner = ClusterBatchPlanner(
    np.zeros(len(train), dtype=np.int64), train.labels, sampler_name="adaptbalanced", batch_size=80,
    samples_per_class=2, num_replicas=1, small_class_action="sample_other", seed=0, recluster_index=0,
)
images = steady_images = 0
total_s = steady_s = first_batch_s = 0.0
for epoch in range(epochs):
    plan = planner.plan_epoch(epoch)
    loader = make_train_loader(dataset, plan, seed=0, epoch=epoch, num_workers=workers, pin_memory=torch.cuda.is_available())
    start = time.perf_counter()
    for i, batch in enumerate(loader):
        if i == 0:
            first = time.perf_counter()
            first_batch_s += first - start
        else:
            steady_images += len(batch.images)
        images += len(batch.images)
    end = time.perf_counter()
    total_s += end - start
    steady_s += end - first
print(json.dumps({
    "img_per_s": round(steady_images / steady_s, 1), "img_per_s_with_startup": round(images / total_s, 1),
    "first_batch_s": round(first_batch_s / epochs, 3), "images": images, "epochs": epochs, "workers": workers,
    "crop": crop, "batch_size": 80, "train_images": len(train),
}))
EOF

step recluster 150 "$PY" benchmarks/bench_recluster.py --backend "$BACKEND" --device "$DEVICE" --workers "$NPROC" \
    "${RECLUSTER_ARGS[@]}" "${GPU_FLAGS[@]}"

STEPS="env cuda_tests sop train_step loader recluster"
if [ -f benchmarks/bench_eval.py ]; then
    EVAL_HELP=$(timeout 20 "$PY" benchmarks/bench_eval.py --help 2>/dev/null)
    EVAL_ARGS=()
    grep -q -- "--backend" <<<"$EVAL_HELP" && EVAL_ARGS+=(--backend "$BACKEND")
    [ "$QUICK" = 1 ] && grep -q -- "--classes" <<<"$EVAL_HELP" && EVAL_ARGS+=(--n 3000 --classes 560)
    step eval 90 "$PY" benchmarks/bench_eval.py "${EVAL_ARGS[@]}"
    STEPS="$STEPS eval"
fi

# ------------------------------------------------------------------ report
"$PY" - "$WORK" "$QUICK" "$LIMIT" "$(($(date +%s) - START))" ${STEPS} <<'EOF'
import json, os, sys
work, quick, limit, elapsed, names = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]

def read(name, suffix, default=""):
    path = os.path.join(work, f"{name}.{suffix}")
    return open(path, errors="replace").read() if os.path.exists(path) else default

def last_json(text):
    """The last JSON object in a step's standard output, or None."""
    decoder = json.JSONDecoder()
    for start in sorted((i for i, c in enumerate(text) if c == "{" and (i == 0 or text[i - 1] == "\n")), reverse=True):
        try:
            return decoder.raw_decode(text[start:])[0]
        except ValueError:
            continue
    return None

report = {"quick": quick, "limit_s": limit, "elapsed_s": elapsed, "steps": {}}
for name in [n for n in ("join", "install") if os.path.exists(os.path.join(work, f"{n}.rc"))] + names:
    rc = int(read(name, "rc", "-1").strip() or -1)
    entry = {"ok": rc == 0, "rc": rc, "seconds": int(read(name, "s", "0").strip() or 0)}
    result = last_json(read(name, "out"))
    if result is not None:
        entry["result"] = result
    if rc != 0 or (result is None and name != "install"):  # pip prints no JSON
        entry["ok"] = False
        entry["timed_out"] = rc in (124, 137)
        entry["stderr_tail"] = read(name, "err")[-2000:]
    report["steps"][name] = entry
text = json.dumps(report, indent=2)
print(text)
if os.environ.get("OUT"):
    with open(os.path.join(os.environ["OUT"], "gpu_check.json"), "w") as handle:
        handle.write(text + "\n")
EOF
