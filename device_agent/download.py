"""Download a bundle archive with resume, strict range checks, retries and a size cap.

The archive grows in `<sha256>.part` beside `<sha256>.etag` (the validator of
the response that wrote its bytes). A resumed request sends `Range` and
`If-Range` with that ETag, and a 206 is accepted only when `Content-Range` is
exactly `bytes <have>-<end>/<announced size>` (and its ETag, if any, is the
same); anything else throws the partial file away. A 200 starts over. More
bytes than announced, or than the cap, abort at once. A complete file whose
sha256 differs from the desired one is deleted. Only a checked file is
renamed to `<sha256>.edgebundle`, so that name always means "complete and
correct". Failed attempts back off exponentially; an attempt that got
further into the file than any before resets the count, so a server going
down and up keeps progressing, and one that fails the same way forever does not.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from device_agent import faults
from device_agent.registry_client import RegistryClient, RegistryError
from edgebase.durable import atomic_write, fsync_dir
from edgebundle import ARCHIVE_SUFFIX

log = logging.getLogger(__name__)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
PERMANENT_STATUS = frozenset({400, 401, 403, 404, 410})


class DownloadError(Exception):
    """The archive could not be downloaded; `permanent` when retrying is pointless."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class DownloadCancelled(Exception):
    """A newer desired version superseded this download."""


class _Retry(Exception):
    """This attempt failed; try again (after backoff)."""


@dataclass(frozen=True)
class DownloadPolicy:
    attempts: int = 8
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0


def archive_paths(folder: Path, sha256: str) -> tuple[Path, Path, Path]:
    """(partial file, its ETag, the complete checked archive) of one archive in the downloads folder."""
    return folder / f"{sha256}.part", folder / f"{sha256}.etag", folder / f"{sha256}{ARCHIVE_SUFFIX}"


class Downloader:
    def __init__(
        self, client: RegistryClient, folder: Path, policy: DownloadPolicy, cancel: threading.Event
    ) -> None:
        self.client = client
        self.folder = folder
        self.policy = policy
        self.cancel = cancel

    def fetch(self, url: str, sha256: str, size: int) -> Path:
        """The checked archive; DownloadError after too many failed attempts, DownloadCancelled when superseded."""
        self.folder.mkdir(parents=True, exist_ok=True)
        part, etag_file, final = archive_paths(self.folder, sha256)
        if final.is_file():
            return final
        failures = 0
        last_error = "no attempt made"
        reached = part.stat().st_size if part.exists() else 0  # progress = bytes beyond any reached before
        while True:
            if self.cancel.is_set():
                raise DownloadCancelled()
            try:
                self._attempt(url, sha256, size, part, etag_file)
                if self._finish(sha256, size, part, etag_file, final):
                    return final
                raise _Retry(f"the file did not end at {size} bytes")
            except _Retry as exc:
                last_error = str(exc)
            except RegistryError as exc:
                raise DownloadError(str(exc), permanent=True) from None
            now_have = part.stat().st_size if part.exists() else 0
            grew, reached = now_have > reached, max(reached, now_have)
            failures = 0 if grew else failures + 1
            if failures >= self.policy.attempts:
                raise DownloadError(f"download failed {failures} times in a row; last: {last_error}")
            delay = (
                0.0
                if grew
                else min(self.policy.backoff_max_s, self.policy.backoff_initial_s * 2 ** (failures - 1))
            )
            log.info("download attempt failed (%s); next in %.1f s", last_error, delay)
            if self.cancel.wait(delay * random.uniform(0.5, 1.0)):
                raise DownloadCancelled()

    def _attempt(self, url: str, sha256: str, size: int, part: Path, etag_file: Path) -> None:
        import httpx

        have = part.stat().st_size if part.exists() else 0
        etag = etag_file.read_text().strip() if etag_file.exists() else ""
        if have >= size or (have and not etag):
            have = self._discard(part, etag_file)  # complete-but-wrong, too long, or no validator: start over
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers.update({"Range": f"bytes={have}-", "If-Range": etag})
        try:
            with self.client.stream(url, headers) as response:
                status = response.status_code
                if status == 206 and have:
                    self._check_range(response, have, size, etag, part, etag_file)
                    self._write(response, part, have, size, append=True)
                elif status == 200:
                    length = response.headers.get("Content-Length")
                    if length is not None and length.isdigit() and int(length) != size:
                        raise _Retry(f"the server sends {length} bytes, the desired archive has {size}")
                    new_etag = response.headers.get("ETag", "")
                    self._discard(part, etag_file)
                    if new_etag:
                        atomic_write(etag_file, new_etag.encode())
                    self._write(response, part, 0, size, append=False)
                elif status == 416:
                    self._discard(part, etag_file)
                    raise _Retry("the server says our partial file's range is not satisfiable")
                elif status in PERMANENT_STATUS:
                    raise DownloadError(f"the server answered {status} for the archive", permanent=True)
                else:
                    raise _Retry(f"the server answered {status}")
        except httpx.HTTPError as exc:
            raise _Retry(f"{type(exc).__name__}: {str(exc)[:120]}") from None

    def _check_range(self, response, have: int, size: int, etag: str, part: Path, etag_file: Path) -> None:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", "").strip())
        answered_etag = response.headers.get("ETag")
        problem = None
        if match is None:
            problem = f"a 206 without a usable Content-Range ({response.headers.get('Content-Range')!r})"
        else:
            start, end, total = (int(g) for g in match.groups())
            if start != have or total != size or not start <= end < size:
                problem = f"Content-Range {match.group(0)!r} does not continue our {have} of {size} bytes"
        if problem is None and answered_etag is not None and answered_etag != etag:
            problem = "the ETag changed between resumes"
        if problem:
            self._discard(part, etag_file)
            raise _Retry(problem)

    def _write(self, response, part: Path, have: int, size: int, *, append: bool) -> None:
        crash_at = faults.download_crash_offset()
        written = have
        with open(part, "ab" if append else "wb") as out:
            for chunk in response.iter_raw():  # as the bytes arrive: a cut connection loses none of them
                if self.cancel.is_set():
                    raise DownloadCancelled()
                if written + len(chunk) > size:
                    out.close()
                    part.unlink(missing_ok=True)
                    raise _Retry(f"the server sent more than the announced {size} bytes")
                if crash_at is not None and written < crash_at <= written + len(chunk):
                    out.write(chunk[: crash_at - written])
                    out.flush()
                    faults.crash_now()
                out.write(chunk)
                written += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if written < size:
            raise _Retry(f"the body ended after {written} of {size} bytes")

    def _finish(self, sha256: str, size: int, part: Path, etag_file: Path, final: Path) -> bool:
        if not part.exists() or part.stat().st_size != size:
            return False
        digest = hashlib.sha256()
        with open(part, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            self._discard(part, etag_file)
            raise _Retry("the archive's sha256 differs from the desired one (content changed?)")
        os.replace(part, final)
        etag_file.unlink(missing_ok=True)
        fsync_dir(self.folder)
        return True

    @staticmethod
    def _discard(part: Path, etag_file: Path) -> int:
        part.unlink(missing_ok=True)
        etag_file.unlink(missing_ok=True)
        return 0
