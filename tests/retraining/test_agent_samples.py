"""The agent's side of sample upload, in process with a real pipeline: nothing is collected until the
registry switches it on; then only the least confident inputs are kept (copied, as the model took them),
and the uploader follows the registry's daily allowance, keeps what it could not send, and drops
everything once switched off."""

from __future__ import annotations

import numpy as np
import pytest

from device_agent.metrics import InferenceMetrics
from device_agent.pipeline import Pipeline
from device_agent.runtimes import SessionOptions
from device_agent.samples import SampleUploader
from edgewire.device_api import SampleUploadResult, SampleUploadSettings
from tests.device_agent.bundles import classifier_bundle

ON = SampleUploadSettings(enabled=True, max_per_day=10, max_confidence=0.9, per_upload=3, upload_interval_s=5)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Pipeline:
    from edgebundle import generate_keypair, load_private_key

    root = tmp_path_factory.mktemp("sampling")
    private, _ = generate_keypair(root / "keys")
    built = classifier_bundle(root, load_private_key(private), 1)
    return Pipeline(built.folder, built.manifest, "a", SessionOptions(threads=1), InferenceMetrics())


def _inputs(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [
        rng.uniform(0, 1, size=(1, 3, 8, 8)).astype(np.float32) * rng.uniform(0.1, 3) for _ in range(count)
    ]


def test_nothing_is_collected_until_the_registry_switches_it_on(pipeline):
    uploader = SampleUploader(fleet="default", device="cam-1", allowed=True)
    uploader.attach(pipeline)
    assert pipeline.sampler is None  # off by default: the pipeline's one check finds nothing to call
    for x in _inputs(5):
        pipeline.infer_tensors([x])
    uploader.configure(ON, pipeline)
    assert pipeline.sampler is uploader.collector is not None
    vetoed = SampleUploader(fleet="default", device="cam-1", allowed=False)  # telemetry.sample_upload: false
    vetoed.configure(ON, pipeline)
    assert pipeline.sampler is None and vetoed.collector is None
    uploader.configure(SampleUploadSettings(), pipeline)
    assert pipeline.sampler is None


def test_only_the_least_confident_inputs_are_kept_as_the_model_took_them(pipeline):
    uploader = SampleUploader(fleet="default", device="cam-1", allowed=True)
    uploader.configure(ON, pipeline)
    seen = []
    for x in _inputs(40):
        result = pipeline.infer_tensors([x])
        seen.append((result.predictions[0].score, result.predictions[0].class_id, x.copy()))
        x *= 0  # the caller reuses its buffer: what was kept must be a copy
    kept = uploader.collector.take()
    below = sorted((s for s in seen if s[0] < ON.max_confidence), key=lambda s: s[0])
    assert len(kept) == ON.per_upload == 3
    assert [k.confidence for k in kept] == pytest.approx([s[0] for s in below[:3]])
    assert [k.class_id for k in kept] == [s[1] for s in below[:3]]
    for item, (_, _, x) in zip(kept, below[:3], strict=True):
        np.testing.assert_array_equal(item.array, x)
    assert uploader.collector.take() == []  # taking starts over
    assert uploader.collector.cutoff == ON.max_confidence


class FakeRegistry:
    """Stands in for the HTTP call only: answers like the registry's /v1/device/samples would."""

    def __init__(self, remaining: int, status: int = 200) -> None:
        self.remaining, self.status, self.uploads = remaining, status, []

    def post(self, upload):  # type: ignore[no-untyped-def]
        if self.status != 200:
            return self.status, None
        self.uploads.append(upload)
        accepted = min(self.remaining, len(upload.samples))
        self.remaining -= accepted
        return 200, SampleUploadResult(
            accepted=accepted,
            duplicates=0,
            over_cap=len(upload.samples) - accepted,
            remaining_today=self.remaining,
        )


def test_the_uploader_follows_the_daily_allowance_and_keeps_what_it_could_not_send(pipeline):
    uploader = SampleUploader(fleet="default", device="cam-1", allowed=True)
    uploader.configure(ON, pipeline)
    for x in _inputs(40):
        pipeline.infer_tensors([x])
    down = FakeRegistry(10, status=0)  # unreachable
    assert uploader.upload(down.post, now=1000.0) == 0
    assert not uploader.due(1001.0) and uploader.due(1005.0)
    registry = FakeRegistry(remaining=2)  # the registry says: 2 more today
    assert uploader.upload(registry.post, now=1006.0) == 2
    upload = registry.uploads[0]
    assert (upload.fleet, upload.device, upload.model.name, upload.model.version) == (
        "default",
        "cam-1",
        "tiny",
        1,
    )
    sample = upload.samples[0]
    assert sample.layout == "NCHW" and sample.shape == [1, 3, 8, 8] and sample.confidence < ON.max_confidence
    for x in _inputs(40):
        pipeline.infer_tensors([x])
    assert uploader.upload(registry.post, now=1012.0) == 0 and len(registry.uploads) == 1  # cap spent today
    refused = FakeRegistry(10, status=403)  # switched off at the registry in the meantime
    for x in _inputs(40):
        pipeline.infer_tensors([x])
    assert uploader.upload(refused.post, now=1012.0 + 86400) == 0
    assert uploader.upload(registry.post, now=1020.0 + 86400) == 0  # the refused ones were dropped
    uploader.configure(SampleUploadSettings(), pipeline)
    assert pipeline.sampler is None and not uploader.due(10**9)
