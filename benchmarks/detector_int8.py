"""Benchmark: detector INT8, edgectl against the leading exporter (Ultralytics), same model and data, one run.

A YOLO11n trained here on the generated shapes set (`tests/samples.py`) goes through
- edgectl's CLI (`edgectl build`): `cpu` FP32 (the baseline of every row), `rpi5` FP32, and INT8 for
  `cpu`, `rpi5`, `android` and `jetson-orin-nano`, each with the same 400 calibration images and the
  dataset's val split as `--val`;
- Ultralytics' own exporter, in a virtual environment of this benchmark's own
  (benchmarks/.venv-ultralytics, never the project's dependencies): ONNX (its default opset), FP32
  LiteRT and full-INT8 LiteRT calibrated on the same 400 images. Skipped, with a line saying so, when
  that environment is absent.

Every artifact is then measured in this one process, in one run: mAP50-95 and mAP50 on the val split with
edgectl's scoring (`toolchain/detection.py`; boxes normalised to 0..1 are scaled to pixels first), the drop
against edgectl's FP32 ONNX, file size, and p50 / p95 latency at 2 threads (ONNX Runtime
intra_op_num_threads=2, the LiteRT interpreter num_threads=2), the runs of all artifacts interleaved so that
they share the machine's noise. Build times are the wall time of each `edgectl build` (a fresh export cache
each) or Ultralytics export. A build that fails is a row with its error.

640 px rows: the 160 px model fine-tuned for a few epochs at 640 on the same shapes drawn at 640
(`--finetune-epochs`), since a detector trained at 160 sees shapes four times smaller than it was taught.

Writes benchmarks/results/detector_int8.{json,md,png}; trained models, data and artifacts are cached under
benchmarks/results/tmp/detector_int8 (edgectl's artifacts are rebuilt on every run, the exporter's are not).

    .venv/bin/python benchmarks/detector_int8.py --setup-exporter   # once: the exporter's own venv
    .venv/bin/python benchmarks/detector_int8.py [--sizes 160,640] [--runs 200] [--skip-exporter]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EXPORTER_VENV = ROOT / "benchmarks" / ".venv-ultralytics"
EXPORTER_PACKAGES = [
    "ultralytics>=8.4,<8.5",
    "litert-torch",
    "ai-edge-litert",
    "ai-edge-quantizer",
    "onnx",
    "onnxslim",
    "onnxruntime",
]
EDGECTL = ROOT / ".venv" / "bin" / "edgectl"
# the issue's size: the model is trained from scratch at it, other sizes are fine-tuned from it
BASE_SIZE = 160
BASE_EPOCHS = 30  # the 160 px model's epochs from scratch; another count gets a cache folder of its own
TRAIN_IMAGES = 400  # the calibration set (the issue's 400 images)
VAL_IMAGES = {160: 100, 640: 64}
THREADS = 2
CONF_THRESHOLD = 0.001  # what Ultralytics' validator and edgectl's gate score mAP with
IOU_THRESHOLD = 0.7
MAX_DETECTIONS = 300
BLOCK = 5  # timed runs per artifact per round
GOALS = {"cpu_int8_ratio": 0.75, "litert_int8_ratio": 0.45, "max_drop": 1.0}

# (target, precision): edgectl's builds, the baseline first
EDGECTL_PLANS = [
    ("cpu", "fp32"),
    ("rpi5", "fp32"),
    ("cpu", "int8"),
    ("rpi5", "int8"),
    ("android", "int8"),
    ("jetson-orin-nano", "int8"),
]

# Runs inside the exporter's venv: one Ultralytics export per entry, timed, errors kept.
_EXPORT_SCRIPT = r"""
import json, sys, time
spec = json.loads(sys.argv[1])
import ultralytics
from ultralytics import YOLO
from ultralytics.cfg import DEFAULT_CFG_DICT
int8 = {"quantize": 8} if "quantize" in DEFAULT_CFG_DICT else {"int8": True}
litert = "litert" if "quantize" in DEFAULT_CFG_DICT else "tflite"
common = {"imgsz": spec["imgsz"], "device": "cpu", "batch": 1}
plans = {
    "onnx": {"format": "onnx"},
    "litert-fp32": {"format": litert},
    "litert-int8": {"format": litert, **int8, "data": spec["data"], "split": "train", "fraction": 1.0},
}
out = {"version": ultralytics.__version__, "exports": {}}
for name, kwargs in plans.items():
    start = time.perf_counter()
    try:
        path, error = str(YOLO(spec["checkpoint"], task="detect").export(**common, **kwargs)), None
    except Exception as exc:
        path, error = None, f"{type(exc).__name__}: {exc}"
    out["exports"][name] = {"path": path, "seconds": time.perf_counter() - start, "error": error,
                            "args": {**common, **kwargs}}
print("EXPORT_RESULT " + json.dumps(out))
"""

# Runs inside the exporter's venv: Ultralytics' own `val` of each artifact (the cross-check users would run).
_VAL_SCRIPT = r"""
import json, sys
spec = json.loads(sys.argv[1])
from ultralytics import YOLO
out = {}
for path in spec["paths"]:
    try:
        m = YOLO(path, task="detect").val(data=spec["data"], imgsz=spec["imgsz"], batch=1, device="cpu",
                                          plots=False, verbose=False, project=spec["project"], name="val",
                                          exist_ok=True)
        out[path] = {"mAP50-95": 100 * float(m.box.map), "mAP50": 100 * float(m.box.map50), "error": None}
    except Exception as exc:
        out[path] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
print("VAL_RESULT " + json.dumps(out))
"""


def _offline_env(config_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of every child: Ultralytics offline, with settings of its own, never auto-installing."""
    config_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        YOLO_OFFLINE="1",
        YOLO_AUTOINSTALL="false",
        YOLO_CONFIG_DIR=str(config_dir),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        **extra,
    )
    return env


def setup_exporter() -> None:
    """Create benchmarks/.venv-ultralytics with Ultralytics and its LiteRT exporter (pip, local mirrors)."""
    if not (EXPORTER_VENV / "bin" / "python").is_file():
        subprocess.run([sys.executable, "-m", "venv", str(EXPORTER_VENV)], check=True)
    pip = [str(EXPORTER_VENV / "bin" / "python"), "-m", "pip"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", *EXPORTER_PACKAGES], check=True)


# ---------------------------------------------------------------- data and model (cached)


def prepare_model(size: int, work: Path, finetune_epochs: int, base_epochs: int = BASE_EPOCHS) -> dict:
    """The shapes set drawn at `size` and a YOLO11n for it; cached, so a rerun trains nothing.

    The 160 px model trains `base_epochs` from scratch; other sizes fine-tune it `finetune_epochs` (a
    cached one fine-tuned another number of epochs is trained again)."""
    root = work / (f"s{size}" if base_epochs == BASE_EPOCHS else f"s{size}-base{base_epochs}")
    record_file = root / "model.json"
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        trained_as_asked = size == BASE_SIZE or record.get("finetune_epochs") == finetune_epochs
        if trained_as_asked and Path(record["checkpoint"]).is_file() and Path(record["data"]).is_file():
            record["cached"] = True
            return record
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(work / "yolo-config"))
    from tests.samples import make_shapes_detection_dataset, train_tiny_yolo

    start = time.perf_counter()
    data_yaml = make_shapes_detection_dataset(
        root / "shapes", train=TRAIN_IMAGES, val=VAL_IMAGES.get(size, 64), imgsz=size, seed=0
    )
    data_seconds = time.perf_counter() - start
    start = time.perf_counter()
    if size == BASE_SIZE:
        checkpoint = train_tiny_yolo(data_yaml, root / "yolo", imgsz=size, epochs=base_epochs)
        how = f"YOLO11n from scratch, {base_epochs} epochs at {size} px on {TRAIN_IMAGES} images"
    else:
        base = prepare_model(BASE_SIZE, work, finetune_epochs, base_epochs)["checkpoint"]
        checkpoint = train_tiny_yolo(
            data_yaml, root / "yolo", model_yaml=base, imgsz=size, epochs=finetune_epochs, warmup_epochs=0
        )
        how = (
            f"the {BASE_SIZE} px model fine-tuned {finetune_epochs} epochs at {size} px "
            f"on {TRAIN_IMAGES} images drawn at {size}"
        )
    record = {
        "size": size,
        "data": str(data_yaml),
        "calib": str(data_yaml.parent / "images" / "train"),
        "checkpoint": str(checkpoint),
        "how": how,
        # a cache asked for another count retrains
        "finetune_epochs": None if size == BASE_SIZE else finetune_epochs,
        "data_seconds": round(data_seconds, 1),
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    record_file.write_text(json.dumps(record, indent=2) + "\n")
    return {**record, "cached": False}


# ---------------------------------------------------------------- builds


def _tail(text: str, lines: int = 4) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:])[-600:]


def build_edgectl(model: dict, target: str, precision: str, work: Path, key: Path, timeout: int) -> dict:
    """One `edgectl build` through the real CLI; its manifest's artifacts become rows (or one error row)."""
    size = model["size"]
    out = work / f"s{size}" / "edgectl" / f"{target}-{precision}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = [
        str(EDGECTL),
        "build",
        model["checkpoint"],
        "--target",
        target,
        "--precision",
        precision,
        "--calib",
        model["calib"],
        "--calib-limit",
        str(TRAIN_IMAGES),
        "--val",
        model["data"],
        "--max-drop",
        str(GOALS["max_drop"]),
        "--input-shape",
        f"1,3,{size},{size}",
        "--name",
        f"yolo11n-shapes-{size}",
        "--out",
        str(out / "bundles"),
        "--sign-key",
        str(key),
        "--json",
    ]
    # a fresh export cache per build: each build time is what a user's first build of that target costs
    env = _offline_env(work / "yolo-config", EDGECTL_CACHE_DIR=str(out / "cache"))
    print(f"[{size}] edgectl build --target {target} --precision {precision} ...", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
        returncode, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        returncode, stdout, stderr = -1, "", f"error: timed out after {timeout} s {exc.stderr or ''}"
    seconds = round(time.perf_counter() - start, 1)
    (out / "build.log").write_text(f"$ {' '.join(command)}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n")
    base = {"source": "edgectl", "target": target, "precision": precision, "build_seconds": seconds}
    print(f"[{size}]   {seconds:.0f} s, exit {returncode}", flush=True)
    if returncode != 0:
        return {**base, "error": _tail(stderr or stdout), "artifacts": []}
    try:
        bundles = json.loads(stdout[stdout.index("{") :])["bundles"]
    except (ValueError, KeyError) as exc:
        return {**base, "error": f"unreadable --json output: {exc}", "artifacts": []}
    artifacts = []
    for bundle in bundles:
        manifest = json.loads((Path(bundle["bundle"]) / "manifest.json").read_text())
        for artifact in manifest["artifacts"]:
            # the bundle's other files (android's fp16 fallback) are not what was asked for
            if artifact["precision"] != precision and len(manifest["artifacts"]) > 1:
                continue
            artifacts.append(
                {
                    "path": str(Path(bundle["bundle"]) / artifact["path"]),
                    "file": artifact["path"],
                    "role": artifact.get("role"),
                    "precision": artifact["precision"],
                    "manifest": _manifest_summary(manifest, artifact),
                }
            )
    return {**base, "error": None, "artifacts": artifacts}


def _manifest_summary(manifest: dict, artifact: dict) -> dict:
    """What the bundle says about itself: its own mAP and drop, the repair, the box convention."""
    report = artifact.get("validation") or manifest.get("validation") or {}
    repair = report.get("repair") or {}
    nms = (manifest.get("postprocessing") or {}).get("nms") or {}
    return {
        "runtime": manifest.get("runtime"),
        "mAP50-95": (report.get("artifact") or {}).get("mAP50-95"),
        "reference_mAP50-95": (report.get("reference") or {}).get("mAP50-95"),
        "drop_points": report.get("drop_points"),
        "passed": report.get("passed"),
        "repair": repair.get("method"),
        "layers_kept_float": len(repair.get("layers_kept_float") or []),
        "notes": report.get("notes") or [],
        "output_format": nms.get("output_format"),
        "p50_ms": (artifact.get("benchmark") or {}).get("latency_ms_p50"),
    }


def build_exporter(model: dict, work: Path, timeout: int) -> list[dict]:
    """Ultralytics' ONNX, FP32 and INT8 LiteRT of the same checkpoint, cached per checkpoint."""
    size = model["size"]
    root = work / f"s{size}" / "ultralytics"
    record_file = root / "exports.json"
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        if record.get("checkpoint") == model["checkpoint"] and all(
            e["path"] is None or Path(e["path"]).exists() for e in record["exports"].values()
        ):
            print(f"[{size}] Ultralytics exports: cached ({record_file})", flush=True)
            return _exporter_rows(record, cached=True)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    # exports land next to the .pt: export a copy, so the trained run folder stays as it was
    checkpoint = root / "yolo11n-shapes.pt"
    shutil.copy2(model["checkpoint"], checkpoint)
    spec = {"checkpoint": str(checkpoint), "imgsz": size, "data": model["data"]}
    print(f"[{size}] Ultralytics exports (onnx, litert fp32, litert int8) ...", flush=True)
    env = _offline_env(root / "config")
    start = time.perf_counter()
    proc = subprocess.run(
        [str(EXPORTER_VENV / "bin" / "python"), "-c", _EXPORT_SCRIPT, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=root,
    )
    (root / "export.log").write_text(proc.stdout + "\n--- stderr\n" + proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("EXPORT_RESULT ")]
    if not lines:
        error = _tail(proc.stderr or proc.stdout)
        return [
            {"source": "ultralytics", "target": name, "precision": "-", "build_seconds": None, "error": error}
            | {"artifacts": []}
            for name in ("onnx", "litert-fp32", "litert-int8")
        ]
    record = json.loads(lines[-1][len("EXPORT_RESULT ") :])
    record["checkpoint"] = model["checkpoint"]
    record["seconds"] = round(time.perf_counter() - start, 1)
    record_file.write_text(json.dumps(record, indent=2) + "\n")
    print(f"[{size}]   {record['seconds']:.0f} s (Ultralytics {record['version']})", flush=True)
    return _exporter_rows(record, cached=False)


def _exporter_rows(record: dict, cached: bool) -> list[dict]:
    rows = []
    for name, export in record["exports"].items():
        precision = "int8" if name.endswith("int8") else "fp32"
        row = {
            "source": "ultralytics",
            "target": name,
            "precision": precision,
            "build_seconds": round(export["seconds"], 1),
            "build_cached": cached,
            "error": export["error"],
            "version": record["version"],
            "artifacts": [],
        }
        if export["path"]:
            path = Path(export["path"])
            row["artifacts"] = [
                {"path": str(path), "file": path.name, "precision": precision, "manifest": {}}
            ]
        rows.append(row)
    return rows


# ---------------------------------------------------------------- measuring


def _as_ultralytics_output(outputs: list[np.ndarray], num_classes: int) -> np.ndarray:
    """(4 + nc, anchors) from one image's outputs: one (1, 4 + nc, A) or (1, A, 4 + nc) tensor, or boxes and
    scores as two outputs (4 and nc channels), whichever convention the artifact follows."""
    channels = 4 + num_classes
    parts = []
    for value in outputs:
        value = np.asarray(value, dtype=np.float32).reshape(np.asarray(value).shape[-2:])
        if value.shape[0] not in (4, num_classes, channels) and value.shape[1] in (4, num_classes, channels):
            value = value.T
        parts.append(value)
    if len(parts) == 1:
        return parts[0]
    boxes = next(p for p in parts if p.shape[0] == 4)
    scores = next(p for p in parts if p.shape[0] == num_classes)
    return np.concatenate([boxes, scores], axis=0)


def load_val(data_yaml: Path, size: int) -> tuple[np.ndarray, list[np.ndarray], int]:
    """The val split as (N, 1, 3, S, S) float 0..1 RGB and per image (m, 5) class, x1, y1, x2, y2 in pixels."""
    import yaml
    from PIL import Image

    from toolchain.detection import yolo_labels_to_xyxy

    spec = yaml.safe_load(data_yaml.read_text())
    images_dir = Path(spec["path"]) / spec["val"]
    images, boxes = [], []
    for file in sorted(images_dir.glob("*.png")):
        with Image.open(file) as img:
            rgb = img.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.BILINEAR)
            images.append(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0)
        label = file.parent.parent.parent / "labels" / file.parent.name / f"{file.stem}.txt"
        rows = np.loadtxt(label, dtype=np.float32, ndmin=2) if label.stat().st_size else np.zeros((0, 5))
        boxes.append(yolo_labels_to_xyxy(rows, size, size))
    return np.stack(images), boxes, len(spec["names"])


def measure(artifacts: list[dict], data_yaml: Path, size: int, runs: int) -> None:
    """mAP and latency of every artifact, in place. Timed runs interleave the artifacts, round by round."""
    from toolchain.detection import decode_ultralytics, detection_metrics
    from toolchain.detector_head import embedded_metadata
    from toolchain.runners import open_runner, runtime_for

    images, truths, num_classes = load_val(data_yaml, size)
    runners = {}
    for artifact in artifacts:
        try:  # the runners `build` validates with; on .onnx / .ort / .tflite files they are the plain runtimes
            path = Path(artifact["path"])
            runners[artifact["path"]] = open_runner(runtime_for(path), path, THREADS)
        except Exception as exc:  # an artifact the plain runtime refuses is a row with its error
            artifact["measure_error"] = f"{type(exc).__name__}: {exc}"[:300]
    for artifact in artifacts:
        runner = runners.get(artifact["path"])
        if runner is None:
            continue
        # Boxes normalised to 0..1 (Ultralytics' LiteRT convention) come back in input pixels: the LiteRT
        # runner scales them when the file says so, as Ultralytics' backend reads it, by the metadata.json
        # it carries (edgectl's and Ultralytics' TFLite detectors both do); not from the values, since DFL
        # boxes of stray anchors reach 3x the input size.
        raw = [_as_ultralytics_output(runner.run(runner.prepare(x)), num_classes) for x in images]
        normalized = embedded_metadata(Path(artifact["path"])).get("task") == "detect"
        predictions = [
            decode_ultralytics(r, CONF_THRESHOLD, IOU_THRESHOLD, MAX_DETECTIONS, multi_label=True)[0]
            for r in raw
        ]
        scores = detection_metrics(predictions, truths, num_classes)
        artifact.update(
            runtime=runtime_for(Path(artifact["path"])),
            input=f"{runner.input_dtype.name} {runner.input_shape}",
            boxes="normalized" if normalized else "pixels",
            size_bytes=_size(Path(artifact["path"])),
            **{k: round(100 * v, 2) for k, v in scores.items() if k in ("mAP50-95", "mAP50")},
        )
    # latency: every round times each artifact for a block of BLOCK runs (after one untimed run that warms
    # its caches), in an order that rotates, on the same image. Blocks, not single runs: switching models on
    # every run flushes the caches each time and penalises the small INT8 models most (toolchain/speed.py).
    timed = [a for a in artifacts if a["path"] in runners]
    inputs = {a["path"]: runners[a["path"]].prepare(images[0]) for a in timed}
    for a in timed:
        for _ in range(10):
            runners[a["path"]].run(inputs[a["path"]])
    samples: dict[str, list[float]] = {a["path"]: [] for a in timed}
    for round_index in range(max(1, runs // BLOCK)):
        shift = round_index % max(1, len(timed))
        for a in timed[shift:] + timed[:shift]:
            runner, x = runners[a["path"]], inputs[a["path"]]
            runner.run(x)
            for _ in range(BLOCK):
                start = time.perf_counter()
                runner.run(x)
                samples[a["path"]].append((time.perf_counter() - start) * 1000)
    for a in timed:
        a["p50_ms"] = round(float(np.percentile(samples[a["path"]], 50)), 3)
        a["p95_ms"] = round(float(np.percentile(samples[a["path"]], 95)), 3)


def _size(path: Path) -> int:
    return (
        sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def ultralytics_val(artifacts: list[dict], model: dict, work: Path) -> None:
    """Ultralytics' own `val` of each artifact it can load (not .ort), as a user of that tool would check."""
    paths = [a["path"] for a in artifacts if not a["path"].endswith(".ort")]
    spec = {"paths": paths, "data": model["data"], "imgsz": model["size"], "project": str(work / "uval")}
    root = work / f"s{model['size']}" / "ultralytics"
    root.mkdir(parents=True, exist_ok=True)
    print(f"[{model['size']}] Ultralytics val of {len(paths)} artifacts ...", flush=True)
    proc = subprocess.run(
        [str(EXPORTER_VENV / "bin" / "python"), "-c", _VAL_SCRIPT, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=_offline_env(root / "config"),
        cwd=root,
        timeout=3600,
    )
    (root / "val.log").write_text(proc.stdout + "\n--- stderr\n" + proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("VAL_RESULT ")]
    results = json.loads(lines[-1][len("VAL_RESULT ") :]) if lines else {}
    for a in artifacts:
        if a["path"] in results:
            a["ultralytics_val"] = results[a["path"]]


# ---------------------------------------------------------------- one image size


def run_size(size: int, args, work: Path, key: Path) -> dict:
    phases: dict[str, float] = {}
    model = prepare_model(size, work, args.finetune_epochs)
    phases["data (cached: first run's)" if model["cached"] else "data"] = model["data_seconds"]
    phases["training (cached: first run's)" if model["cached"] else "training"] = model["train_seconds"]
    builds = [
        build_edgectl(model, target, precision, work, key, args.build_timeout)
        for target, precision in EDGECTL_PLANS
    ]
    for b in builds:
        phases[f"edgectl build {b['target']} {b['precision']}"] = b["build_seconds"]
    exporter_note = None
    if args.skip_exporter:
        exporter_note = "the leading exporter's rows skipped (--skip-exporter)"
    elif not (EXPORTER_VENV / "bin" / "python").is_file():
        exporter_note = (
            f"the leading exporter's rows skipped: no {EXPORTER_VENV.relative_to(ROOT)} "
            "(create it with --setup-exporter)"
        )
    else:
        exported = build_exporter(model, work, args.build_timeout)
        builds += exported
        for b in exported:
            label = f"Ultralytics export {b['target']}" + (
                " (cached: first run's)" if b.get("build_cached") else ""
            )
            phases[label] = b["build_seconds"]
    if exporter_note:
        print(f"[{size}] {exporter_note}", flush=True)
    rows = []
    for b in builds:
        if b["error"] or not b["artifacts"]:
            rows.append(
                {**{k: v for k, v in b.items() if k != "artifacts"}, "error": b["error"] or "no artifact"}
            )
        for artifact in b["artifacts"]:
            rows.append({**{k: v for k, v in b.items() if k != "artifacts"}, **artifact})
    measurable = [r for r in rows if r.get("path")]
    start = time.perf_counter()
    print(
        f"[{size}] measuring {len(measurable)} artifacts, {args.runs} interleaved runs each ...", flush=True
    )
    measure(measurable, Path(model["data"]), size, args.runs)
    phases["measuring (mAP + latency, one process)"] = round(time.perf_counter() - start, 1)
    if not exporter_note and not args.skip_ultralytics_val:
        start = time.perf_counter()
        ultralytics_val(measurable, model, work)
        phases["Ultralytics val of every artifact"] = round(time.perf_counter() - start, 1)
    baseline = next(
        (r for r in rows if r["source"] == "edgectl" and r["target"] == "cpu" and r["precision"] == "fp32"),
        None,
    )
    if baseline and "mAP50-95" in baseline:
        for r in rows:
            if "mAP50-95" in r:
                r["drop_points"] = round(baseline["mAP50-95"] - r["mAP50-95"], 2)
            if "p50_ms" in r and r.get("runtime"):
                r["p50_ratio"] = round(r["p50_ms"] / baseline["p50_ms"], 3)
    for r in rows:
        r["label"] = _label(r)
    return {
        "size": size,
        "model": {k: v for k, v in model.items() if k != "cached"},
        "baseline": baseline["label"] if baseline else None,
        "exporter_note": exporter_note,
        "phases_seconds": phases,
        "rows": rows,
        "goals": goal_checks(rows),
    }


def _label(row: dict) -> str:
    if row["source"] == "edgectl":
        return f"edgectl {row['target']} {row['precision']}" + (f" {row['file']}" if row.get("file") else "")
    return f"Ultralytics {row['target']}" + (f" {row['file']}" if row.get("file") else "")


def goal_checks(rows: list[dict]) -> list[dict]:
    """Issue 15's goals for edgectl's INT8 artifacts: speed against the FP32 ONNX, and the accuracy budget."""
    checks = []
    for r in rows:
        if r["source"] != "edgectl" or r["precision"] != "int8":
            continue
        if r.get("error") or "mAP50-95" not in r:
            checks.append({"artifact": r["label"], "goal": "builds at int8", "value": None, "passed": False})
            continue
        checks.append(
            {
                "artifact": r["label"],
                "goal": f"drop <= {GOALS['max_drop']}",
                "value": r.get("drop_points"),
                "passed": r.get("drop_points") is not None and r["drop_points"] <= GOALS["max_drop"],
            }
        )
        limit = None
        if r["target"] == "cpu":
            limit = GOALS["cpu_int8_ratio"]
        elif r.get("runtime") == "tflite":  # the LiteRT interpreter
            limit = GOALS["litert_int8_ratio"]
        if limit is not None:
            checks.append(
                {
                    "artifact": r["label"],
                    "goal": f"p50 <= {limit}x FP32 ONNX",
                    "value": r.get("p50_ratio"),
                    "passed": r.get("p50_ratio") is not None and r["p50_ratio"] <= limit,
                }
            )
    return checks


# ---------------------------------------------------------------- output


def _fmt(value, spec: str = ".2f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def write_markdown(results: list[dict], host: str, path: Path) -> None:
    lines = [
        "# Detector INT8: edgectl and the leading exporter",
        "",
        f"Host: {host}. One YOLO11n on the generated three-class shapes set, {TRAIN_IMAGES} calibration "
        "images (the train split), scored on the val split with edgectl's scoring (conf 0.001, IoU 0.7, "
        "multi-label, as Ultralytics' validator); boxes normalised to 0..1 are scaled to pixels first. "
        f"Latency: p50 / p95 of the plain runtime at {THREADS} threads (ONNX Runtime, LiteRT interpreter "
        "with XNNPACK), all artifacts interleaved in blocks of 5 runs in one process; ratio and drop against edgectl's FP32 "
        "ONNX. Build s: the `edgectl build` (fresh export cache) or the Ultralytics export.",
        "",
        f"Goals (issue 15): `cpu` INT8 p50 <= {GOALS['cpu_int8_ratio']}x, LiteRT INT8 p50 <= "
        f"{GOALS['litert_int8_ratio']}x, drop <= {GOALS['max_drop']} mAP50-95 points.",
    ]
    for result in results:
        lines += ["", f"## {result['size']} px", "", f"Model: {result['model']['how']}."]
        if result["exporter_note"]:
            lines += ["", f"Note: {result['exporter_note']}."]
        lines += [
            "",
            "| artifact | boxes | mAP50-95 | mAP50 | drop | size KB | p50 ms | p95 ms | x FP32 ONNX | build s "
            "| manifest mAP50-95 / repair | Ultralytics val |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["rows"]:
            if r.get("error") or r.get("measure_error"):
                error = (r.get("error") or r.get("measure_error")).replace("|", "/")
                lines.append(
                    f"| {r['label']} | failed: {error} |  |  |  |  |  |  |  | {_fmt(r['build_seconds'], '.0f')} |  |  |"
                )
                continue
            manifest = r.get("manifest") or {}
            own = "-"
            if manifest.get("mAP50-95") is not None:
                own = f"{manifest['mAP50-95']:.2f} / {manifest.get('repair') or 'none'}"
                if manifest.get("layers_kept_float"):
                    own += f" ({manifest['layers_kept_float']} float)"
            uval = r.get("ultralytics_val") or {}
            uval_text = _fmt(uval.get("mAP50-95")) if not uval.get("error") else "refused"
            if not uval:
                uval_text = "-"
            lines.append(
                f"| {r['label']} | {r.get('boxes', '-')} | {_fmt(r.get('mAP50-95'))} | {_fmt(r.get('mAP50'))} | "
                f"{_fmt(r.get('drop_points'))} | {_fmt(r.get('size_bytes', 0) / 1024, '.0f')} | "
                f"{_fmt(r.get('p50_ms'), '.3f')} | {_fmt(r.get('p95_ms'), '.3f')} | {_fmt(r.get('p50_ratio'), '.2f')}x | "
                f"{_fmt(r['build_seconds'], '.0f')} | {own} | {uval_text} |"
            )
        lines += ["", "| goal | artifact | value | passed |", "|---|---|---|---|"]
        for check in result["goals"]:
            verdict = "pass" if check["passed"] else "**FAIL**"
            lines.append(f"| {check['goal']} | {check['artifact']} | {_fmt(check['value'])} | {verdict} |")
        lines += [
            "",
            "Phases (s): " + ", ".join(f"{k} {_fmt(v, '.0f')}" for k, v in result["phases_seconds"].items()),
        ]
    path.write_text("\n".join(lines) + "\n")


def write_plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(7.5 * len(results), 6), squeeze=False)
    for axis, result in zip(axes[0], results, strict=True):
        for r in result["rows"]:
            if r.get("p50_ratio") is None or r.get("drop_points") is None:
                continue
            colour = "tab:blue" if r["source"] == "edgectl" else "tab:red"
            marker = "o" if r["precision"] == "int8" else "s"
            axis.scatter(r["p50_ratio"], max(r["drop_points"], 0.01), color=colour, marker=marker)
            axis.annotate(
                r["label"].replace(" model", " "),
                (r["p50_ratio"], max(r["drop_points"], 0.01)),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
        axis.axhline(GOALS["max_drop"], color="grey", linestyle="--", linewidth=0.8)
        axis.axvline(GOALS["cpu_int8_ratio"], color="tab:green", linestyle=":", linewidth=0.8)
        axis.axvline(GOALS["litert_int8_ratio"], color="tab:purple", linestyle=":", linewidth=0.8)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("p50 latency / edgectl FP32 ONNX p50 (2 threads)")
        axis.set_ylabel("mAP50-95 drop vs FP32 ONNX, points (floored at 0.01)")
        axis.set_title(f"{result['size']} px: blue edgectl, red Ultralytics; o int8, s float")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--work", type=Path, default=ROOT / "benchmarks" / "results" / "tmp" / "detector_int8"
    )
    parser.add_argument("--sizes", default="160,640", help="image sizes, comma separated")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per artifact")
    parser.add_argument("--finetune-epochs", type=int, default=2, help="epochs at sizes other than 160")
    parser.add_argument("--build-timeout", type=int, default=3600, help="seconds per build or export")
    parser.add_argument("--skip-exporter", action="store_true", help="no Ultralytics rows")
    parser.add_argument("--skip-ultralytics-val", action="store_true", help="no Ultralytics val cross-check")
    parser.add_argument("--setup-exporter", action="store_true", help="create the exporter's venv, then exit")
    args = parser.parse_args()
    if args.setup_exporter:
        setup_exporter()
        return
    from toolchain.benchmark import host_description

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    key = work / "keys" / "signing.key"
    if not key.is_file():
        subprocess.run(
            [str(EDGECTL), "keys", "generate", "--out", str(key.parent)], check=True, capture_output=True
        )
    started = time.perf_counter()
    results = [run_size(size, args, work, key) for size in sizes]
    host = host_description()
    args.out.mkdir(parents=True, exist_ok=True)
    document = {
        "host": host,
        "threads": THREADS,
        "runs": args.runs,
        "goals": GOALS,
        "total_seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    (args.out / "detector_int8.json").write_text(json.dumps(document, indent=2) + "\n")
    write_markdown(results, host, args.out / "detector_int8.md")
    write_plot(results, args.out / "detector_int8.png")
    print((args.out / "detector_int8.md").read_text())


if __name__ == "__main__":
    main()
