"""The reference training entry point of the retraining loop, for the demo digits CNN (`edgectl demo`).

A real fine-tune on the CPU in seconds: the parent version's weights (its TorchScript source, as the
registry keeps it), the labeled samples devices uploaded (oversampled), and a replay of the original
training data when the job's training-data reference is `sklearn:digits` (so the model does not forget
the digits it knew). Declare it in a retraining policy as

    entry_point:
      callable: toolchain.finetune_digits:finetune
      params: {epochs: 5, lr: 0.002, replay: 300, oversample: 2, threads: 1}

It returns the new TorchScript file, and validation data for the build's accuracy gate and the new
version's drift reference: the original validation split plus the new samples, so the reference
covers what devices see now.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

SKLEARN_DIGITS = "sklearn:digits"


def _original_digits(image_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The demo's own split of scikit-learn's digits, as float inputs in [0, 1] (what the demo trains on)."""
    from toolchain.demo import _digits_images

    x_train, x_val, y_train, y_val = _digits_images(seed, image_size)
    to_float = lambda a: a.astype(np.float32)[:, None] / 255.0  # noqa: E731
    return to_float(x_train), y_train.astype(np.int64), to_float(x_val), y_val.astype(np.int64)


def _load_module(path: Path):  # type: ignore[no-untyped-def]
    """The parent as a trainable module: the demo architecture with the TorchScript's weights when it fits
    (BatchNorm then trains properly), else the TorchScript module itself."""
    import torch

    from toolchain.demo import _make_model

    scripted = torch.jit.load(str(path), map_location="cpu")
    state = scripted.state_dict()
    conv_widths = [v.shape[0] for k, v in state.items() if k.endswith(".weight") and v.ndim == 4]
    if len(conv_widths) == 6:
        module, _ = _make_model((conv_widths[0], conv_widths[2], conv_widths[4]))
        try:
            module.load_state_dict(state)
            return module
        except RuntimeError:
            pass
    return scripted


def finetune(job: Any) -> dict[str, Any]:
    """`job`: a cloud_registry.jobs.contract.TrainingJob. Returns the TrainingResult fields."""
    import torch

    params = dict(job.params)
    epochs, lr = int(params.get("epochs", 5)), float(params.get("lr", 2e-3))
    replay, oversample = int(params.get("replay", 300)), int(params.get("oversample", 2))
    seed = int(params.get("seed", 0))
    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    torch.manual_seed(seed)
    started = time.monotonic()

    with np.load(job.samples, allow_pickle=False) as data:
        x_new, y_new = data["x"].astype(np.float32), data["y"].astype(np.int64)
    image_size = int(job.input_shape[-1])
    xs, ys = [x_new] * oversample, [y_new] * oversample
    val_x, val_y = [x_new], [y_new]
    if job.training_data == SKLEARN_DIGITS:
        x_train, y_train, x_val, y_val = _original_digits(image_size)
        pick = np.random.default_rng(seed).choice(len(x_train), min(replay, len(x_train)), replace=False)
        xs.append(x_train[pick])
        ys.append(y_train[pick])
        val_x.insert(0, x_val)
        val_y.insert(0, y_val)
    elif job.training_data:
        print(
            f"training data {job.training_data!r} is not {SKLEARN_DIGITS}: fine-tuning on the samples alone"
        )
    x, y = torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))
    print(
        f"fine-tuning v{job.parent_version} on {len(x_new)} new samples x{oversample} + {len(x) - oversample * len(x_new)} replayed"
    )

    model = _load_module(Path(job.parent_model))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    batches = (len(x) + 63) // 64
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(1, epochs * batches))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), 64):
            index = order[start : start + 64]
            batch = x[index]
            dx, dy = torch.randint(-2, 3, (2,), generator=generator).tolist()  # as the demo trains
            batch = torch.roll(batch, shifts=(dy, dx), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(batch), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        losses.append(round(total / len(x), 4))
        print(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]}")
    model.eval()
    with torch.no_grad():
        train_top1 = float((model(torch.from_numpy(x_new)).argmax(1).numpy() == y_new).mean())

    out = Path(job.out_dir)
    model_path = out / "digits_cnn.pt"
    example = torch.zeros(job.input_shape)
    scripted = model if isinstance(model, torch.jit.ScriptModule) else torch.jit.trace(model, example)
    torch.jit.save(scripted, str(model_path))
    np.savez(out / "val.npz", x=np.concatenate(val_x), y=np.concatenate(val_y))
    return {
        "model": model_path.name,
        "val": "val.npz",
        "calib": "val.npz",
        "metrics": {
            "epochs": epochs,
            "loss": losses,
            "new_samples": len(x_new),
            "train_top1_on_new_samples": round(100 * train_top1, 2),
            "seconds": round(time.monotonic() - started, 2),
        },
    }
