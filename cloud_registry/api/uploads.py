"""Request bodies streamed to a temporary file, size-limited whether or not a Content-Length was sent."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request, status

# The OpenAPI description of a raw-bytes request body (FastAPI cannot infer it from a streamed request).
BINARY_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@dataclass(frozen=True)
class Upload:
    path: Path
    sha256: str
    size: int


@asynccontextmanager
async def received(request: Request, limit: int, *, what: str, suffix: str = "") -> AsyncIterator[Upload]:
    """The body in a temporary file (removed afterwards): 413 past `limit` bytes, 422 when empty."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"uploads are limited to {limit} bytes")
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=suffix)
    path = Path(name)
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(
                        status.HTTP_413_CONTENT_TOO_LARGE, f"uploads are limited to {limit} bytes"
                    )
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"empty upload: send the {what} bytes")
        yield Upload(path, digest.hexdigest(), size)
    finally:
        path.unlink(missing_ok=True)
