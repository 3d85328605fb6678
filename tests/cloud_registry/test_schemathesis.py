"""Schemathesis generates requests for every operation of the OpenAPI schema; none may get a server error.

Run with schemathesis's own CLI against a live registry (its pytest plugin does not load under this
pytest). Calls carry the admin token, so generated data reaches the handlers instead of stopping at 401.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.cloud_registry.conftest import ADMIN_TOKEN


def test_openapi_schema_fuzzing_finds_no_server_error(live, signing, tmp_path):
    import httpx

    from tests.cloud_registry.helpers import make_bundle

    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    archive = make_bundle(tmp_path, signing[0])  # real rows, so generated names sometimes hit them
    httpx.post(f"{live.url}/api/v1/bundles", content=archive.read_bytes(), headers=admin).raise_for_status()
    schema = httpx.get(f"{live.url}/openapi.json").json()
    assert len(schema["paths"]) >= 20

    st = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(st),
            "run",
            f"{live.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--header",
            f"Authorization: Bearer {ADMIN_TOKEN}",
            "--max-examples",
            "25",
            "--workers",
            "1",
            "--phases",
            "examples,coverage,fuzzing",
            "--seed",
            "7",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    summary = result.stdout[-4000:]
    assert result.returncode == 0, summary + result.stderr[-2000:]
    last = summary.strip().splitlines()
    assert any(" passed" in line and "failed" not in line for line in last[-6:]), summary
