"""The local HTTP API of a running agent: infer (image or tensor), health, status, Prometheus metrics, errors."""

from __future__ import annotations

import http.client
import io

import numpy as np
import pytest

from tests.device_agent.bundles import classifier_bundle
from tests.device_agent.harness import AgentProcess, write_agent
from tests.device_agent.registry_server import FakeRegistry
from tests.device_agent.test_pipeline import png


@pytest.fixture(scope="module")
def agent(tmp_path_factory, signing):
    root = tmp_path_factory.mktemp("http")
    registry = FakeRegistry().start()
    setup = write_agent(
        root / "a", [signing.public_path], registry=registry, http={"max_request_bytes": 4096}
    )
    process = AgentProcess(setup).start()
    yield process, registry, root
    process.kill()
    registry.stop()


def raw_request(agent, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", agent.setup.http_port, timeout=10)
    connection.putrequest(method, path)
    for key, value in (headers or {}).items():
        connection.putheader(key, value)
    connection.endheaders()
    if body:
        connection.send(body)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, data


def test_the_api_before_and_after_a_model_is_installed(agent, signing):
    process, registry, root = agent
    status, body = raw_request(process, "GET", "/healthz")
    assert status == 503 and b"no model" in body
    code, answer = process.post("/v1/infer", png(np.zeros((8, 8, 3), np.uint8)), "image/png")
    assert code == 503 and answer["hint"]
    desired = registry.desire(classifier_bundle(root, signing.private, 1))
    process.wait_update(desired.update_id)
    status, body = raw_request(process, "GET", "/healthz")
    assert status == 200 and b'"version":1' in body

    image = png(np.random.default_rng(0).integers(0, 256, size=(20, 20, 3), dtype=np.uint8))
    code, answer = process.post("/v1/infer?top_k=2", image, "image/png")
    assert code == 200 and len(answer["predictions"]) == 2 and answer["model"]["version"] == 1
    assert "outputs" not in answer
    code, sniffed = process.post("/v1/infer?top_k=2", image, "application/octet-stream")
    assert code == 200 and sniffed["predictions"] == answer["predictions"]

    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((1, 3, 8, 8), np.float32))
    code, tensors = process.post("/v1/infer?outputs=1", buffer.getvalue(), "application/x-npz")
    assert code == 200 and tensors["outputs"][0]["shape"] == [1, 4]

    status = process.status()
    assert status["device"] == "dev-1" and status["target"] == "cpu" and status["active_slot"] == "a"
    assert status["update"]["state"] == "SUCCEEDED" and status["runtime"]["runtime"] == "onnxruntime"
    metrics = process.get("/metrics")
    assert "edgectl_agent_inferences_total 3" in metrics
    assert 'edgectl_agent_model_info{name="tiny",version="1",slot="a"} 1' in metrics
    assert 'edgectl_agent_update_state{state="SUCCEEDED"} 1' in metrics
    assert "edgectl_agent_resident_memory_bytes" in metrics and "edgectl_agent_queue_pending" in metrics


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "words"),
    [
        (
            "POST",
            "/v1/infer",
            b"garbage",
            {"Content-Type": "image/jpeg", "Content-Length": "7"},
            400,
            b"cannot decode",
        ),
        (
            "POST",
            "/v1/infer",
            b"x" * 5000,
            {"Content-Type": "image/png", "Content-Length": "5000"},
            413,
            b"over 4096",
        ),
        ("POST", "/v1/infer", None, {"Content-Type": "image/png"}, 411, b"Content-Length"),
        ("POST", "/v1/infer?top_k=0", b"x", {"Content-Length": "1"}, 400, b"top_k"),
        ("GET", "/v2/anything", None, {}, 404, b"no such path"),
        ("POST", "/v1/elsewhere", b"", {"Content-Length": "0"}, 404, b"no such path"),
    ],
)
def test_bad_requests_get_an_error_and_a_hint(agent, signing, method, path, body, headers, status, words):
    process, registry, root = agent
    if process.status()["model"] is None:
        process.wait_update(registry.desire(classifier_bundle(root / "b", signing.private, 1)).update_id)
    got, data = raw_request(process, method, path, body, headers)
    assert got == status and words in data, data
    assert b'"error"' in data
