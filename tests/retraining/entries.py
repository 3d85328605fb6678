"""Training entry points the job tests declare as commands (`python -m tests.retraining.entries MODE`):
they read the job from $EDGECTL_JOB and write out_dir/result.json, as any command entry point does.

- copy: the parent's model unchanged, after `params.sleep` seconds (a job slow enough to kill mid-way);
- nudge: the parent's weights saved again with an extra file in the archive: another model file, the
  same model (built with the same calibration data, it scores exactly what the last build of it did);
- scramble: the parent's weights with noise added: a model far worse than its parent;
- always: the parent with its last layer set to answer class `params.label` (default 0) for any input,
  what training on a label file whose every row says that class comes to.

Both refuse to run when the registry's own settings (EDGECTL_REGISTRY_*: its admin token, its broker
password) reached them: a job's processes must not see those.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from cloud_registry.jobs.contract import TrainingJob


def main(mode: str) -> None:
    leaked = sorted(k for k in os.environ if k.startswith("EDGECTL_REGISTRY_"))
    if leaked:  # the registry's settings (its admin token...) are not the training code's business
        raise SystemExit(f"error: the registry's settings reached the training code: {', '.join(leaked)}")
    job = TrainingJob.read(os.environ["EDGECTL_JOB"])
    out = Path(job.out_dir)
    model = out / Path(job.parent_model).name
    print(f"{mode}: job {job.job_id}, v{job.parent_version} -> v{job.new_version}, {job.samples}", flush=True)
    if mode == "copy":
        time.sleep(float(job.params.get("sleep", 0)))
        shutil.copy(job.parent_model, model)
    elif mode == "nudge":
        import torch

        time.sleep(float(job.params.get("sleep", 0)))
        scripted = torch.jit.load(str(job.parent_model))
        torch.jit.save(scripted, str(model), _extra_files={"nudge.txt": f"job {job.job_id}"})
    elif mode == "always":
        import torch

        scripted = torch.jit.load(str(job.parent_model))
        with torch.no_grad():  # the last layer's weight and bias: nothing but the bias of one class is left
            parameters = list(scripted.parameters())
            parameters[-2].zero_()
            parameters[-1].fill_(-10.0)
            parameters[-1][int(job.params.get("label", 0))] = 10.0
        torch.jit.save(scripted, str(model))
    elif mode == "scramble":
        import torch

        torch.manual_seed(0)
        scripted = torch.jit.load(str(job.parent_model))
        with torch.no_grad():
            for parameter in scripted.parameters():
                parameter.add_(torch.randn_like(parameter) * (2 * parameter.std() + 1e-3))
        torch.jit.save(scripted, str(model))
    else:
        raise SystemExit(f"error: unknown mode {mode}")
    (out / "result.json").write_text(json.dumps({"model": model.name, "metrics": {"mode": mode}}))


if __name__ == "__main__":
    main(sys.argv[1])
