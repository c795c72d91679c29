"""Where a scoring graph's time goes on an execution provider: ONNX Runtime's own profiler over a
few batches, each node's time (on a GPU: the host's time in the node, launches and waits) summed by
op type and split into the network (what `probs`
depends on, the forward-only graph) and the explanation path (gradient, CAM, upsampling, Dice).
Nodes placed on the CPU and the copies between devices are counted apart: on a GPU they are
the first place to look. Part of scripts/gpu-check.sh (docs/gpu.md).

    python scripts/gpu_profile.py --model scoring-fp16.onnx --batch 64 --json profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from xgal.scorer.engines.providers import CPU, ProviderSettings, provider_options
from xgal.scorer.precision.fp16 import ancestors


def network_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes `probs` depends on (a rewritten graph may give several nodes one name:
    the walk is by position, as the FP16 converter's)."""
    return {model.graph.node[i].name for i in ancestors(model.graph, "probs")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--provider", default="CUDAExecutionProvider")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument(
        "--option", action="append", default=[], help="KEY=VALUE for the provider, e.g. prefer_nhwc=1."
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    extra = dict(o.split("=", 1) for o in args.option)

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        # The profile names the nodes of the graph as ONNX Runtime rewrote it (fused, re-laid
        # out): the network/explanation split is read from that graph, saved here.
        opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "profile")
        opts.log_severity_level = 3
        providers = [args.provider] if args.provider == CPU else [args.provider, CPU]
        chosen = provider_options(providers, ProviderSettings(), args.model)
        chosen[0] = (chosen[0][0], {**chosen[0][1], **extra})
        session = ort.InferenceSession(os.fspath(args.model), opts, providers=chosen)
        rng = np.random.default_rng(0)
        inputs = {i.name: i for i in session.get_inputs()}
        c, h, w = inputs["image"].shape[1:]
        dtype = inputs["image"].type.removeprefix("tensor(").removesuffix(")")
        image = rng.integers(0, 256, (args.batch, c, h, w)).astype(dtype)
        roi = np.zeros((args.batch, h, w), np.uint8)
        roi[:, h // 4 : h // 2, w // 4 : w // 2] = 1
        # A forward-only graph (to set against) takes the image alone.
        feed = {
            i.name: {"image": image, "roi": roi}[i.name] for i in session.get_inputs() if i.name != "target"
        }
        for _ in range(3 + args.runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
        optimized = onnx.load(opts.optimized_model_filepath)
        network = network_nodes(optimized)
        # Nodes the provider adds at run time (layout changes, copies) are in neither part.
        known = {node.name for node in optimized.graph.node}

    # The warm-up runs are left out: the first one holds cuDNN's search for each convolution.
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[3:]
    start = runs[0]["ts"] if runs else 0
    by_op: dict[tuple[str, str], float] = defaultdict(float)
    placed: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < start:
            continue
        node = e["name"][: -len("_kernel_time")]
        part = "network" if node in network else "explanation" if node in known else "unmatched"
        by_op[(part, e["args"].get("op_name", "?"))] += e["dur"]
        placed[e["args"].get("provider", "?")] += 1
    per_run = 1e-3 / max(1, len(runs))  # microseconds summed over the timed runs -> ms per run
    placed = {k: v // max(1, len(runs)) for k, v in placed.items()}
    parts = {
        p: sum(v for (q, _), v in by_op.items() if q == p) * per_run
        for p in ("network", "explanation", "unmatched")
    }
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[: args.top]
    doc = {
        "model": str(args.model),
        "providers": session.get_providers(),
        "options": extra,
        "batch": args.batch,
        "model_run_ms": float(np.median([e["dur"] for e in runs])) / 1000 if runs else None,
        "kernel_ms_per_run": parts,
        "explanation_share": parts["explanation"] / max(1e-9, parts["network"] + parts["explanation"]),
        "nodes_per_run_by_provider": placed,
        "top_ops_ms_per_run": [{"part": p, "op": op, "ms": v * per_run} for (p, op), v in top],
    }
    text = json.dumps(doc, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
