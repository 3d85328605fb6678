"""Benchmark: the device agent's inference throughput against a bare runtime loop on the same bundle, and
the agent process's resident memory.

Paths compared, on the same signed bundle, input tensor, runtime and thread count:
- bare loop: `InferenceSession.run` of the agent's own session on one preprocessed tensor, nothing else;
- agent, tensor in: `Pipeline.infer_tensors`, what POST /v1/infer runs for a .npy body and the input loop
  for .npy files: input checks, the runtime, inference counters, the best label (top-1, the default; top-5
  measured too), drift statistics;
- agent, image in: `Pipeline.infer_image` on a 640x480 JPEG: the same plus decoding, resizing, normalizing;
- HTTP: a keep-alive client posting that JPEG to a running `edgectl-agent run` process.

How the 97 % the issue asks for is judged: this machine is shared with other people's builds and tests,
which swing wall-clock rates by tens of percent from one second to the next. So the bare loop and the
agent's tensor path are called alternately, call by call, and each call's CPU time on the calling
thread is summed (the runtime runs on that thread with one intra-op thread, and the agent's work,
drift statistics included, happens there too): both paths see the same machine at every instant.
Contiguous wall-clock loops are reported beside it, with their spread over rounds.

Memory: RSS of an agent process serving the model, idle and sampled every 50 ms under the HTTP load,
its peak (VmHWM), and an agent with no model, for what the agent itself costs.

Models: torchvision's MobileNetV3-Small (about 3 ms here: the hardest case for a fixed per-inference
cost), MobileNetV2 and ResNet-18, random weights (speed does not depend on them), exported to ONNX at 224x224 in a
child process; the agent and this script never import torch.

Writes benchmarks/results/agent_throughput.{json,md,png}.

    .venv/bin/python benchmarks/agent_throughput.py [--threads 1] [--models mobilenet_v3_small,resnet18]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MIB = 2**20
MODELS = {  # torchvision name -> (title, paired calls, wall-clock rounds)
    "mobilenet_v3_small": ("MobileNetV3-Small", 1500, 15),
    "mobilenet_v2": ("MobileNetV2", 600, 9),
    "resnet18": ("ResNet-18", 300, 9),
}

_EXPORT = """
import sys, torch, torchvision
model = getattr(torchvision.models, sys.argv[2])(weights=None).eval()
torch.onnx.export(model, torch.zeros(1, 3, 224, 224), sys.argv[1], input_names=["images"],
                  output_names=["logits"], opset_version=17, dynamo=False)
"""


def build_bundle(work: Path, model: str) -> tuple[Path, Path, Path]:
    """(bundle folder, archive, public key) of a signed bundle of a torchvision classifier, with a health check."""
    import numpy as np
    import onnxruntime as ort

    from edgebundle import generate_keypair, load_private_key
    from edgebundle.manifest import Artifact, HealthCheck, Postprocessing, Preprocessing, TensorSpec
    from tests.device_agent.bundles import manifest_for, publish  # the agent tests' bundle writer

    staging = work / "staging"
    staging.mkdir(parents=True)
    onnx_path = staging / "model.onnx"
    subprocess.run([sys.executable, "-c", _EXPORT, str(onnx_path), model], check=True, capture_output=True)
    sample = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    (reference,) = ort.InferenceSession(str(onnx_path)).run(None, {"images": sample})
    np.save(staging / "sample_input.npy", sample)
    np.savez(staging / "sample_outputs.npz", output_0=reference)
    artifact = Artifact(
        path="model.onnx",
        format="onnx",
        precision="fp32",
        inputs=[TensorSpec(name="images", shape=[1, 3, 224, 224], dtype="float32", layout="NCHW")],
        outputs=[TensorSpec(name="logits", shape=[1, 1000], dtype="float32")],
    )
    manifest = manifest_for(
        model.replace("_", "-"),
        1,
        "cpu",
        "onnxruntime",
        artifact,
        converter="torch.onnx",
        preprocessing=Preprocessing(layout="NCHW", mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        postprocessing=Postprocessing(task="classify", labels=[f"class-{i}" for i in range(1000)]),
        health=HealthCheck(
            sample_input="sample_input.npy", sample_outputs="sample_outputs.npz", min_cosine=0.999
        ),
    )
    private, public = generate_keypair(work / "keys")
    built = publish(staging, manifest, load_private_key(private), work / "out")
    return built.folder, built.archive, public


def jpeg(seed: int = 0) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def wall_rate(step, seconds: float) -> float:
    """Calls of `step` per wall-clock second, run for about `seconds`."""
    count, start = 0, time.perf_counter()
    while True:
        step()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


def paired_cpu(steps: list, calls: int) -> list[float]:
    """Calls per CPU second of the calling thread, for steps called in turn (the order rotating each time)."""
    spent = [0.0] * len(steps)
    for index in range(calls):
        for position in range(len(steps)):
            which = (position + index) % len(steps)
            start = time.thread_time()
            steps[which]()
            spent[which] += time.thread_time() - start
    return [calls / seconds for seconds in spent]


def in_process(folder: Path, threads: int, calls: int, rounds: int) -> dict:

    from device_agent.config import TelemetryConfig
    from device_agent.metrics import InferenceMetrics
    from device_agent.pipeline import Pipeline
    from device_agent.runtimes import SessionOptions
    from edgebundle import read_manifest

    defaults = TelemetryConfig()  # the agent as shipped: drift statistics on, at the default sampling rate
    pipeline = Pipeline(
        folder,
        read_manifest(folder),
        "a",
        SessionOptions(threads=threads),
        InferenceMetrics(),
        drift=defaults.drift,
        drift_per_s=defaults.drift_samples_per_s,
    )
    # The bare loop calls the agent's own ONNX Runtime session: the same weights in the same memory, so
    # the difference is the agent's work alone (two sessions of one model differ by ~1% by placement).
    bare = pipeline.session._session
    image = jpeg()
    tensor = pipeline._image(image)[0]  # exactly the tensor the agent feeds for this image
    feed = {"images": tensor}

    def bare_step() -> None:
        bare.run(None, feed)

    def agent_step() -> None:
        pipeline.infer_tensors([tensor])

    def top5_step() -> None:
        pipeline.infer_tensors([tensor], top_k=5)

    def image_step() -> None:
        pipeline.infer_image(image)

    for step in (bare_step, agent_step, top5_step, image_step):
        wall_rate(step, 0.5)  # warm-up
    bare_cpu, agent_cpu, top5_cpu = paired_cpu([bare_step, agent_step, top5_step], calls)
    walls = []
    for index in range(rounds):
        order = (bare_step, agent_step) if index % 2 == 0 else (agent_step, bare_step)
        measured = {step: wall_rate(step, 1.0) for step in order}
        walls.append((measured[bare_step], measured[agent_step]))
    wall_ratios = [a / b for b, a in walls]
    image_rate = statistics.median(wall_rate(image_step, 1.0) for _ in range(3))
    bare_wall = statistics.median(b for b, _ in walls)
    return {
        "paired_calls": calls,
        "bare_per_cpu_s": round(bare_cpu, 2),
        "agent_per_cpu_s": round(agent_cpu, 2),
        "ratio_cpu": round(agent_cpu / bare_cpu, 4),
        "bare_cpu_ms": round(1000 / bare_cpu, 3),
        "agent_overhead_cpu_us": round((1 / agent_cpu - 1 / bare_cpu) * 1e6, 1),
        "agent_top5_per_cpu_s": round(top5_cpu, 2),
        "ratio_cpu_top5": round(top5_cpu / bare_cpu, 4),
        "wall_rounds": rounds,
        "bare_per_s": round(bare_wall, 2),
        "agent_per_s": round(statistics.median(a for _, a in walls), 2),
        "ratio_wall_median": round(statistics.median(wall_ratios), 4),
        "ratio_wall_min": round(min(wall_ratios), 4),
        "ratio_wall_max": round(max(wall_ratios), 4),
        "agent_image_per_s": round(image_rate, 2),
        "drift_samples_per_s": defaults.drift_samples_per_s,
    }


def _write_config(root: Path, public: Path, threads: int) -> tuple[Path, int]:
    import yaml

    from tests.services import free_port  # the project's helper for a free loopback port

    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    config = {
        "device": {"target": "cpu", "id": "bench", "fleet": "bench"},
        "data_dir": str(root / "data"),
        "trusted_keys": [str(public)],
        "http": {"port": port},
        "inference": {"threads": threads},
        "log_level": "warning",
    }
    path = root / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port


def _start(config: Path, port: int) -> subprocess.Popen:
    agent = subprocess.Popen(
        [sys.executable, "-m", "device_agent.cli", "run", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/v1/status")
            connection.getresponse().read()
            return agent
        except OSError:
            time.sleep(0.1)
    agent.kill()
    raise RuntimeError("the agent did not start")


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / MIB


def _hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _idle_rss(pid: int) -> float:
    time.sleep(1.0)  # let start-up settle
    samples = []
    for _ in range(20):
        samples.append(_rss_mb(pid))
        time.sleep(0.1)
    return statistics.median(samples)


def agent_process(work: Path, archive: Path, public: Path, threads: int, seconds: float) -> dict:
    """An `edgectl-agent run` process serving the bundle: memory idle and under HTTP load, HTTP throughput."""
    config, port = _write_config(work / "agent", public, threads)
    subprocess.run(
        [sys.executable, "-m", "device_agent.cli", "install", "--config", str(config), str(archive)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    agent = _start(config, port)
    try:
        idle = _idle_rss(agent.pid)
        image = jpeg(1)
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(_rss_mb(agent.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        def post() -> None:
            connection.request("POST", "/v1/infer", body=image, headers={"Content-Type": "image/jpeg"})
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(body[:200])

        wall_rate(post, 0.5)
        http_rate = wall_rate(post, seconds)
        stop.set()
        sampler.join()
        connection.close()
        peak = _hwm_mb(agent.pid)
    finally:
        agent.terminate()
        agent.wait(30)
    return {
        "http_image_per_s": round(http_rate, 2),
        "rss_idle_mb": round(idle, 1),
        "rss_under_load_mb": round(max(samples), 1),
        "vm_hwm_mb": round(peak, 1),
    }


def agent_without_model(work: Path, public: Path, threads: int) -> float:
    config, port = _write_config(work / "empty", public, threads)
    agent = _start(config, port)
    try:
        return round(_idle_rss(agent.pid), 1)
    finally:
        agent.terminate()
        agent.wait(30)


def pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def write_markdown(result: dict, path: Path) -> None:
    lines = [
        "# Device agent: throughput and memory",
        "",
        f"Host: {result['host']} (shared with other work). ONNX Runtime {result['onnxruntime']}, CPU, "
        f"{result['threads']} intra-op thread(s). Drift statistics on at the default sampling "
        f"(at most {result['models'][0]['throughput']['drift_samples_per_s']:g} samples per second).",
        "",
        "**Per CPU second** (the bare loop and the agent called alternately, call by call; CPU time of the "
        "calling thread, where the runtime and all the agent's work run): other processes on the machine "
        "cannot favour one path over the other. This is the figure the 97 % is judged on.",
        "",
        "| model | runtime ms (CPU) | bare / CPU s | agent / CPU s | agent vs bare | agent's work per inference "
        "| with top-5 labels: agent vs bare |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["models"]:
        t = row["throughput"]
        lines.append(
            f"| {row['title']} | {t['bare_cpu_ms']} | {t['bare_per_cpu_s']} | {t['agent_per_cpu_s']} | "
            f"**{pct(t['ratio_cpu'])}** | {t['agent_overhead_cpu_us']} us | {pct(t['ratio_cpu_top5'])} |"
        )
    lines += [
        "",
        "**Per wall-clock second** (contiguous 1 s loops, alternating; the spread is other people's load):",
        "",
        "| model | bare loop / s | agent, tensor in / s | agent vs bare: median (min-max over rounds) | "
        "agent, 640x480 JPEG in / s | HTTP POST /v1/infer, JPEG / s |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["models"]:
        t, m = row["throughput"], row["memory"]
        lines.append(
            f"| {row['title']} | {t['bare_per_s']} | {t['agent_per_s']} | {pct(t['ratio_wall_median'])} "
            f"({pct(t['ratio_wall_min'])}-{pct(t['ratio_wall_max'])}) | {t['agent_image_per_s']} | "
            f"{m['http_image_per_s']} |"
        )
    lines += [
        "",
        "| agent process memory (RSS, MB) | idle | under HTTP load (max of 50 ms samples) | peak (VmHWM) |",
        "|---|---|---|---|",
        f"| running, no model installed | {result['rss_no_model_mb']} | | |",
    ]
    for row in result["models"]:
        m = row["memory"]
        lines.append(
            f"| serving {row['title']} | {m['rss_idle_mb']} | {m['rss_under_load_mb']} | {m['vm_hwm_mb']} |"
        )
    keeps = [row["title"] for row in result["models"] if row["throughput"]["ratio_cpu"] >= 0.97]
    misses = [
        f"{row['title']} ({row['throughput']['bare_cpu_ms']:.1f} ms: {pct(row['throughput']['ratio_cpu'])})"
        for row in result["models"]
        if row["throughput"]["ratio_cpu"] < 0.97
    ]
    work = [row["throughput"]["agent_overhead_cpu_us"] for row in result["models"]]
    lines += [
        "",
        f"Reading it: the agent keeps 97 % of the bare loop for {', '.join(keeps) or 'none of these models'}"
        + (f", not for {', '.join(misses)}" if misses else "")
        + ". Its work around each inference (input check, counters, the best label with its softmax "
        f"probability, drift statistics) costs {min(work):.0f}-{max(work):.0f} us of CPU here; the same code "
        "takes about a tenth of that when timed on its own, and the cost grows with the model: it is mostly "
        "Python and numpy refilling the caches the runtime has just flushed. It weighs on models of a few "
        "milliseconds and fades on larger ones (top-5 labels: last column). An image request "
        "also decodes, resizes and normalizes a 640x480 JPEG with Pillow, exactly as the toolchain's "
        "validation does (so what is served matches what was validated); the HTTP rate adds the request on "
        "top. VmHWM includes the health check at start-up.",
        "",
        "Reproduce: `.venv/bin/python benchmarks/agent_throughput.py`.",
        "",
    ]
    path.write_text("\n".join(lines))


def write_plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["models"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [row["title"] for row in rows]
    ratios = [100 * row["throughput"]["ratio_cpu"] for row in rows]
    bars = left.bar(names, ratios, color="#2a7ab9")
    left.bar_label(bars, fmt="%.1f %%")
    left.axhline(97, color="#c0392b", linestyle="--", label="97 %")
    left.set_ylim(min(80, min(ratios) - 5), 101)
    left.tick_params(axis="x", labelsize=9)
    left.set_ylabel("agent / bare loop, per CPU second (%)")
    left.set_title("agent pipeline vs bare runtime loop")
    left.legend(loc="lower right")
    labels = (
        ["no model"] + [f"{row['title']}\nidle" for row in rows] + [f"{row['title']}\nload" for row in rows]
    )
    labels = [label.replace("MobileNet", "MobileNet\n") for label in labels]
    values = (
        [result["rss_no_model_mb"]]
        + [row["memory"]["rss_idle_mb"] for row in rows]
        + [row["memory"]["rss_under_load_mb"] for row in rows]
    )
    bars = right.bar(labels, values, color="#6c8f3c")
    right.bar_label(bars, fmt="%.0f")
    right.set_ylabel("agent RSS, MB")
    right.set_title("agent process memory")
    right.tick_params(axis="x", labelsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--threads", type=int, default=1, help="runtime intra-op threads, the same for both paths"
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated torchvision model names")
    parser.add_argument("--http-seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    import onnxruntime as ort

    from toolchain.benchmark import host_description  # this script runs on the build host

    rows = []
    with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp:
        work = Path(tmp)
        public = None
        for model in args.models.split(","):
            title, calls, rounds = MODELS[model]
            folder, archive, public = build_bundle(work / model, model)
            rows.append(
                {
                    "model": model,
                    "title": title,
                    "throughput": in_process(folder, args.threads, calls, rounds),
                    "memory": agent_process(work / model, archive, public, args.threads, args.http_seconds),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        no_model = agent_without_model(work, public, args.threads)
    result = {
        "host": f"{host_description()}, Python {platform.python_version()}",
        "onnxruntime": ort.__version__,
        "threads": args.threads,
        "models": rows,
        "rss_no_model_mb": no_model,
        "keeps_97_percent": {row["model"]: row["throughput"]["ratio_cpu"] >= 0.97 for row in rows},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "agent_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / "agent_throughput.md")
    write_plot(result, args.out / "agent_throughput.png")
    print((args.out / "agent_throughput.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
