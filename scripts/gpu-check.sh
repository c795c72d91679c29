#!/usr/bin/env bash
# The GPU check (docs/gpu.md): on a machine with an NVIDIA GPU and a Python that has PyTorch
# with CUDA, run from the repository root:
#
#   bash scripts/gpu-check.sh OUT [WHEELS]
#
# WHEELS (optional) is a folder of wheels to install first, offline, for a machine that reaches
# no package index: onnxruntime-gpu and whatever else that Python lacks (docs/gpu.md lists
# them). A wheel too large to send in one piece may come as NAME.whl.part-00, -01, ...: the
# parts are joined in order. Without WHEELS the Python in use must already have xgal's
# dependencies with onnxruntime-gpu and PyTorch with CUDA (docs/gpu.md, Install).
#
# Steps, each with its own time limit, each writing its log and JSON under OUT:
#   env      the GPU, the versions, which ONNX Runtime providers start   env.json
#   tests    the GPU tests (CUDA sessions, FP16, the trainer on CUDA), the TensorRT provider's
#            options and engine cache key                                   tests.xml
#   demo     `xgal demo --quick`, trained (and scored) on the GPU          demo.json
#   parity   CUDA fp32 and FP16 against ONNX Runtime on the CPU, on the demo's trained graph
#            and its pool                                                   parity.json
#   bench    `xgal bench` on CUDA at ResNet-18 224x224: batch sweep, FP16 (dynamic, fixed
#            batch, fixed batch with CUDA graphs) against its forward-only half, eager PyTorch
#            Grad-CAM, ScorePool over gRPC against in process, and the serving path's ceiling
#            (the null graph on 4,096 images)                                bench.json
#   ray      the demo's graph ranked by `xgal score --ray local --ray-gpus 1` (one GPU actor)
#            and in process on the GPU: the same ranking                     ray.json
#   profile  where the FP16 scoring graph's time goes, by op type, network vs explanation, and
#            its forward half's                     profile-scoring-fp16.json, profile-forward-fp16.json
# and summary.json: every step's exit code and seconds. Each step has its limit, and all of them
# together XGAL_CHECK_BUDGET seconds (360: a step is cut to what is left, and skipped, saying so,
# once it is spent; the check before the bench's new rows took 139 s on an H200); a step that
# fails does not stop the next. XGAL_CHECK_PROVIDER, XGAL_CHECK_SIZE and
# XGAL_CHECK_SWEEP change the provider, image side and batch sweep (a dry run of the script on a
# CPU: XGAL_CHECK_PROVIDER=CPUExecutionProvider XGAL_CHECK_SIZE=64 XGAL_CHECK_SWEEP=8,16);
# XGAL_CHECK_STEPS picks steps (e.g. "env bench profile").
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash scripts/gpu-check.sh OUT [WHEELS]}
wheels=${2:-}
PY=${PYTHON:-python3}
provider=${XGAL_CHECK_PROVIDER:-CUDAExecutionProvider}
size=${XGAL_CHECK_SIZE:-224}
sweep=${XGAL_CHECK_SWEEP-8,32,64,128,256}  # empty: no sweep
mkdir -p "$out"
out=$(cd "$out" && pwd)
: >"$out/steps.jsonl"
t0=$(date +%s)
budget=${XGAL_CHECK_BUDGET:-360}  # seconds for every step together (wheels installed before)

steps=" ${XGAL_CHECK_STEPS:-env tests demo parity bench ray profile} "
step() {  # step NAME SECONDS COMMAND...: run, log, record the exit code and time
    local name=$1 limit=$2 start rc
    shift 2
    [[ $steps == *" ${name%%-*} "* ]] || return 0  # profile-x runs with "profile"
    start=$(date +%s)
    local left=$((budget - (start - t0)))
    if [ "$left" -lt 10 ]; then  # the whole check's budget is spent: say so, run nothing more
        echo "{\"step\": \"$name\", \"rc\": 124, \"seconds\": 0, \"skipped\": \"budget spent\"}" >>"$out/steps.jsonl"
        echo "== $name: skipped, the check's ${budget} s are spent"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(($(date +%s) - start))}" >>"$out/steps.jsonl"
    tail -n 15 "$out/$name.log"
    echo "== $name: exit $rc after $(($(date +%s) - start)) s (check at $(($(date +%s) - t0)) s)"
}

if [ -n "$wheels" ]; then
    site=${XGAL_SITE:-/tmp/xgal-site}
    for first in "$wheels"/*.part-00; do
        [ -e "$first" ] || continue
        whole=${first%.part-00}
        cat "$whole".part-* >"$whole" && rm -f "$whole".part-*
    done
    rm -rf "$site"  # only the wheels given now: a package left from an earlier run would shadow
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$wheels"/*.whl || exit 1
    export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
# onnxruntime-gpu loads CUDA, cuBLAS, cuFFT and cuDNN by name: those of the NVIDIA wheels that
# PyTorch came with will do.
nvlib=$("$PY" - <<'EOF'
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except ImportError:
    roots = []
print(":".join(sorted({os.path.dirname(p) for r in roots for p in glob.glob(f"{r}/**/lib*.so*", recursive=True)})))
EOF
)
export LD_LIBRARY_PATH="$nvlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1

step env 30 "$PY" - "$out/env.json" <<'EOF'
import json, platform, subprocess, sys
import numpy, onnxruntime as ort, torch
from xgal.scorer.engines.ort import default_providers
from xgal.scorer.engines.providers import gpu_identity, tensorrt_version
doc = {
    "python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
    "cuda_available": torch.cuda.is_available(), "onnxruntime": ort.__version__, "numpy": numpy.__version__,
    "installed_providers": ort.get_available_providers(), "default_providers": default_providers(),
    "gpu": gpu_identity(), "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    # The TensorRT library the TensorRT provider would load (libnvinfer), or None.
    "tensorrt": tensorrt_version(),
}
print(json.dumps(doc, indent=1))
open(sys.argv[1], "w").write(json.dumps(doc, indent=1))
EOF

step tests 120 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py \
    tests/test_providers.py tests/test_engine_cache.py --junitxml="$out/tests.xml"

demo=${TMPDIR:-/tmp}/xgal-gpu-demo
rm -rf "$demo"
step demo 90 "$PY" -m xgal.cli demo --quick --out "$demo"
cp "$demo/results.json" "$out/demo.json" 2>/dev/null || true

model=$demo/seed0/runs/xgal/model.onnx  # the xgal arm's last round: a trained graph
[ -f "$model" ] || model=$(ls "$demo"/seed0/runs/*/model.onnx 2>/dev/null | head -n 1)
step parity 60 "$PY" scripts/gpu_parity.py --model "${model:-missing.onnx}" --pool "$demo/seed0/pool-train" \
    --provider "$provider" --json "$out/parity.json"

providers=(--provider "$provider")
[ "$provider" = CPUExecutionProvider ] || providers+=(--provider CPUExecutionProvider)
step bench 120 "$PY" -m xgal.cli bench "${providers[@]}" \
    --fp16 --arch resnet18 --image-size "$size" --batch 64 --sweep-batch "$sweep" --pool-size 512 \
    --replicas 1 --ceiling 4096 --no-int8 --repeats 10 --workdir "${TMPDIR:-/tmp}/xgal-gpu-bench" \
    --json "$out/bench.json"

# One GPU actor on a local Ray instance against in process, the same graph and pool.
gpus=1
[ "$provider" = CPUExecutionProvider ] && gpus=0
ranked=${TMPDIR:-/tmp}/xgal-gpu-ray
mkdir -p "$ranked"
step ray 120 bash -c '"$0" -m xgal.cli score --model "$1" --pool "$2" --top-k 50 --provider "$3" --out "$4/in-process.json" &&
    "$0" -m xgal.cli score --model "$1" --pool "$2" --top-k 50 --ray local --ray-actors 1 --ray-gpus "$5" \
        --ray-block 256 --out "$4/ray.json" &&
    "$0" - "$4" "$6" <<EOF
import json, sys
a, b = (json.load(open(f"{sys.argv[1]}/{n}.json")) for n in ("in-process", "ray"))
ids = lambda d: [r["id"] for r in d["top"]]
doc = {"same_ranking": ids(a) == ids(b), "top_k": len(ids(a)), "ray_gpus": float(sys.argv[2] if len(sys.argv) > 2 else 0)}
print(json.dumps(doc)); open(sys.argv[1] + "/ray-check.json", "w").write(json.dumps(doc))
sys.exit(0 if doc["same_ranking"] else 1)
EOF' "$PY" "${model:-missing.onnx}" "$demo/seed0/pool-train" "$provider" "$ranked" "$gpus" "$gpus"
cp "$ranked/ray-check.json" "$out/ray.json" 2>/dev/null || true

# The bench's FP16 scoring graph and its forward half, as the provider runs them; with
# XGAL_CHECK_PROFILE_OPTIONS="prefer_nhwc=1 ..." each again with these provider options.
read -r -a tuned <<<"${XGAL_CHECK_PROFILE_OPTIONS:-}"
for graph in scoring-fp16 forward-fp16; do
    args=(scripts/gpu_profile.py --model "${TMPDIR:-/tmp}/xgal-gpu-bench/$graph.onnx" --provider "$provider" --batch 64)
    step "profile-$graph" 30 "$PY" "${args[@]}" --json "$out/profile-$graph.json"
    if [ ${#tuned[@]} -gt 0 ]; then
        step "profile-$graph-tuned" 30 "$PY" "${args[@]}" $(printf -- '--option %s ' "${tuned[@]}") \
            --json "$out/profile-$graph-tuned.json"
    fi
done

"$PY" - "$out" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()]
doc = {"steps": steps, "seconds": sum(s["seconds"] for s in steps), "ok": all(s["rc"] == 0 for s in steps)}
for name in ("env", "parity", "bench", "ray", "demo", "profile-scoring-fp16", "profile-forward-fp16",
             "profile-scoring-fp16-tuned", "profile-forward-fp16-tuned"):
    path = out / f"{name}.json"
    if path.is_file():
        doc[name] = json.loads(path.read_text())
(out / "summary.json").write_text(json.dumps(doc, indent=1))
print(json.dumps({"ok": doc["ok"], "seconds": doc["seconds"], "steps": steps}, indent=1))
EOF
