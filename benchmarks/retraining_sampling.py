"""Benchmark: what sample upload costs the agent's inference path (device_agent/samples.py).

Three pipelines on the same signed bundle (torchvision's MobileNetV3-Small, random weights, 224x224, about
3 ms an inference here: the model where a fixed per-inference cost shows most), the same input tensor, one
runtime thread, called in turn call by call and timed in CPU seconds of the calling thread (the method of
benchmarks/agent_throughput.py, so other load on the machine affects every path alike):

- off: no collector attached (the default: sample upload is off unless the registry switches it on);
- on, steady: a collector attached whose `per_upload` inputs are kept already, so an inference no less
  sure than the surest kept returns at the cut-off check (what almost every inference costs once on);
- on, kept: every inference is kept (its float input copied into the collector), the worst case;
- off (control): a second pipeline with no collector, so the table shows what two identical paths differ by.

Writes benchmarks/results/retraining_sampling.{json,md}.

    .venv/bin/python benchmarks/retraining_sampling.py [--calls 1500]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.agent_throughput import build_bundle  # noqa: E402 (after the path)


def measure(folder: Path, calls: int, rounds: int) -> dict:
    import numpy as np

    from device_agent.metrics import InferenceMetrics
    from device_agent.pipeline import Pipeline
    from device_agent.runtimes import SessionOptions
    from device_agent.samples import SampleCollector
    from edgebundle import read_manifest
    from edgewire.device_api import SampleUploadSettings

    manifest = read_manifest(folder)
    pipelines = {
        name: Pipeline(folder, manifest, "a", SessionOptions(threads=1), InferenceMetrics())
        for name in ("off", "off (control)", "on, steady", "on, kept")
    }
    steady = SampleCollector(
        SampleUploadSettings(enabled=True, max_confidence=1.0, per_upload=16),
        pipelines["off"].model_ref,
        "NCHW",
        None,
    )
    keep_all = SampleCollector(
        SampleUploadSettings(enabled=True, max_confidence=1.0, per_upload=256),
        pipelines["off"].model_ref,
        "NCHW",
        None,
    )
    pipelines["on, steady"].sampler, pipelines["on, kept"].sampler = steady, keep_all
    x = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    for pipeline in pipelines.values():
        for _ in range(30):
            pipeline.infer_tensors([x])
    names = list(pipelines)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        spent = dict.fromkeys(names, 0.0)
        for index in range(calls):
            for position in range(len(names)):
                name = names[(position + index) % len(names)]
                if name == "on, kept":
                    keep_all.take()  # the uploader's work, on its own thread: not the inference path's
                start = time.thread_time()
                pipelines[name].infer_tensors([x])
                spent[name] += time.thread_time() - start
        for name in names:
            rates[name].append(calls / spent[name])
    off = statistics.median(rates["off"])
    rows = {}
    for name in names:
        rate = statistics.median(rates[name])
        rows[name] = {
            "calls_per_cpu_s": round(rate, 2),
            "rounds": [round(r, 2) for r in rates[name]],
            "relative_to_off": round(rate / off, 4),
            "extra_us_per_inference": round((1 / rate - 1 / off) * 1e6, 1),
        }
    return rows


def write_markdown(result: dict, path: Path) -> None:
    lines = [
        "# Sample upload's cost on the agent's inference path",
        "",
        f"{result['model']}, {result['calls']} paired calls x {result['rounds']} rounds, one runtime thread, "
        f"CPU time of the calling thread; {result['host']}. Medians over rounds.",
        "",
        "| path | calls per CPU second | relative to off | extra per inference |",
        "|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        lines.append(
            f"| {name} | {row['calls_per_cpu_s']:.1f} | {100 * row['relative_to_off']:.1f} % | "
            f"{row['extra_us_per_inference']:+.1f} µs |"
        )
    off_rounds = result["rows"]["off"]["rounds"]
    spread = 100 * (max(off_rounds) - min(off_rounds)) / min(off_rounds)
    lines += [
        "",
        f"Rounds of the off path spread over {spread:.1f} % (other load on the machine); paired calls see the",
        "same load, so rows compare like with like, and 'off (control)', a second pipeline identical to 'off',",
        "shows how far two identical paths differ here.",
        "",
        "Off is the default; the pipeline's only sampling work then is one `is not None` check. On, almost every",
        "inference stops at the collector's cut-off check once `per_upload` inputs are kept; only an input less",
        "sure than all of those pays for a copy of its float input (the 'kept' row, every inference kept).",
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sampling-bench-") as tmp:
        folder, _, _ = build_bundle(Path(tmp), "mobilenet_v3_small")
        rows = measure(folder, args.calls, args.rounds)
    result = {
        "model": "MobileNetV3-Small (random weights, 224x224, ONNX Runtime CPU)",
        "calls": args.calls,
        "rounds": args.rounds,
        "host": f"{platform.machine()}, {platform.python_version()}",
        "rows": rows,
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "retraining_sampling.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, out / "retraining_sampling.md")
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
