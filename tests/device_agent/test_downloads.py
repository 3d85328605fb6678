"""Download faults against a real HTTP server on loopback: what a bad network or a bad server does."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from pydantic import SecretStr

from device_agent.download import DownloadCancelled, Downloader, DownloadError, DownloadPolicy, archive_paths
from device_agent.registry_client import RegistryClient
from edgewire import Paths

DATA = bytes(range(256)) * 2000  # 512 000 bytes
SHA = hashlib.sha256(DATA).hexdigest()
FAST = DownloadPolicy(attempts=6, backoff_initial_s=0.01, backoff_max_s=0.05)


@pytest.fixture
def server(registry, tmp_path):
    archive = tmp_path / "a.edgebundle"
    archive.write_bytes(DATA)
    registry.add_archive(archive)
    return registry


def downloader(
    server, tmp_path, policy: DownloadPolicy = FAST, cancel: threading.Event | None = None
) -> Downloader:
    client = RegistryClient(server.url, SecretStr(server.device_token), timeout_s=10)
    return Downloader(client, tmp_path / "downloads", policy, cancel or threading.Event())


def fetch(server, tmp_path, **kwargs):
    return downloader(server, tmp_path, **kwargs).fetch(Paths.bundle_for(SHA), SHA, len(DATA))


def partial(tmp_path, nbytes: int, etag: str = f'"{SHA}"') -> None:
    """What an interrupted earlier download left: the first bytes and the ETag they came with."""
    part, etag_file, _ = archive_paths(tmp_path / "downloads", SHA)
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(DATA[:nbytes])
    etag_file.write_text(etag)


def test_a_plain_download_is_checked_and_named_only_when_complete(server, tmp_path):
    path = fetch(server, tmp_path)
    assert path.read_bytes() == DATA and path.name == f"{SHA}.edgebundle"
    part, etag, _ = archive_paths(tmp_path / "downloads", SHA)
    assert not part.exists() and not etag.exists()
    assert [r.status for r in server.requests] == [200]


def test_a_truncated_body_is_resumed_exactly_where_it_stopped(server, tmp_path):
    server.max_body = 150_000
    assert fetch(server, tmp_path).read_bytes() == DATA
    assert server.ranges_asked() == ["bytes=150000-", "bytes=300000-", "bytes=450000-"]
    assert all(r.if_range == f'"{SHA}"' for r in server.requests if r.range)
    assert [r.status for r in server.requests] == [200, 206, 206, 206]


def test_a_server_going_down_and_up_repeatedly_still_delivers(server, tmp_path):
    server.max_body = 40_000  # 13 responses at least, and the server disappears between some of them
    stop = threading.Event()

    def flap() -> None:
        while not stop.is_set():
            time.sleep(0.03)
            server.stop()
            time.sleep(0.03)
            server.start()

    flapper = threading.Thread(target=flap)
    flapper.start()
    try:
        assert (
            fetch(
                server,
                tmp_path,
                policy=DownloadPolicy(attempts=50, backoff_initial_s=0.01, backoff_max_s=0.02),
            ).read_bytes()
            == DATA
        )
    finally:
        stop.set()
        flapper.join()
        if server._server is None:
            server.start()
    assert len(server.ranges_asked()) >= 12


def test_a_server_without_range_support_sends_it_all_again(server, tmp_path):
    partial(tmp_path, 100_000)
    server.no_range = True
    assert fetch(server, tmp_path).read_bytes() == DATA
    assert [(r.range, r.status) for r in server.requests] == [("bytes=100000-", 200)]


def test_a_wrong_content_range_discards_the_partial_file(server, tmp_path):
    partial(tmp_path, 100_000)
    server.wrong_content_range = True
    assert fetch(server, tmp_path).read_bytes() == DATA  # the 206 is refused; the next attempt starts over
    assert [(r.range, r.status) for r in server.requests] == [("bytes=100000-", 206), (None, 200)]


def test_a_wrong_content_range_every_time_gives_up(server, tmp_path):
    server.wrong_content_range = True
    server.max_body = 100_000
    with pytest.raises(DownloadError, match="6 times in a row"):
        fetch(server, tmp_path)
    # Each resume was refused and never written: no request ever asked past the first cut.
    assert set(server.ranges_asked()) == {"bytes=100000-"}
    assert not list((tmp_path / "downloads").glob("*.edgebundle"))


def test_content_changed_between_resumes_is_never_mixed(server, tmp_path):
    partial(tmp_path, 100_000)
    other = bytes(reversed(DATA))
    # An honest server: new content, new ETag; If-Range makes it answer 200 with all of the new bytes.
    server.replace_content(SHA, other, new_etag=True)
    with pytest.raises(DownloadError, match="sha256"):
        fetch(server, tmp_path)
    assert [r.status for r in server.requests][:1] == [200]
    # A dishonest one: same ETag, other bytes after the resume point. The resumed file fails its sha256
    # and is thrown away; the next, complete download of those bytes fails too. Nothing is ever kept.
    server.requests.clear()
    partial(tmp_path, 100_000)
    server.replace_content(SHA, DATA[:100_000] + other[100_000:], new_etag=False)
    with pytest.raises(DownloadError, match="sha256"):
        fetch(server, tmp_path)
    assert server.requests[0].range == "bytes=100000-"
    assert not list((tmp_path / "downloads").iterdir())


def test_transient_errors_are_retried_and_missing_archives_are_not(server, tmp_path):
    server.fail_next = 3
    assert fetch(server, tmp_path).read_bytes() == DATA
    assert [r.status for r in server.requests] == [503, 503, 503, 200]
    missing = "0" * 64
    with pytest.raises(DownloadError) as caught:
        downloader(server, tmp_path).fetch(Paths.bundle_for(missing), missing, 10)
    assert caught.value.permanent and "404" in str(caught.value)


def test_a_body_longer_than_announced_is_cut_off(server, tmp_path):
    with pytest.raises(DownloadError, match=f"desired archive has {len(DATA) - 1}"):
        downloader(server, tmp_path).fetch(Paths.bundle_for(SHA), SHA, len(DATA) - 1)
    assert not list((tmp_path / "downloads").glob("*.edgebundle"))


def test_a_cancelled_download_stops(server, tmp_path):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(DownloadCancelled):
        fetch(server, tmp_path, cancel=cancel)


def test_the_token_goes_only_to_the_registry(server):
    client = RegistryClient(server.url, SecretStr("secret-token"), timeout_s=5)
    assert client.resolve("/v1/device/bundles/x")[1] == {"Authorization": "Bearer secret-token"}
    assert client.resolve(f"{server.url}/elsewhere")[1] == {"Authorization": "Bearer secret-token"}
    assert client.resolve("https://cdn.example.com/a.edgebundle")[1] == {}
    assert client.resolve(f"http://localhost:{server.port}/x")[1] == {}  # another host name is another origin
    with pytest.raises(Exception, match="not http"):
        client.resolve("file:///etc/passwd")
