"""Issue 13, rows 10-12 in core: the store never replaces a name silently, concurrent pulls of one
source share one download, failed pulls leave no folder, and public-only pulls (a server's) refuse
private addresses with the message a missing host gets, and stop within a second when cancelled."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from llamalab import ConfigError, OperationCancelledError, SourceUnreachableError, pull
from llamalab.fetch import check_public_url
from tests.fixtures.file_server import FileServer
from tests.fixtures.tiny_llama import write_gguf_with_architecture
from tests.fixtures.waiting import wait_until


@pytest.fixture
def gguf_bytes(tmp_path):
    return write_gguf_with_architecture(tmp_path / "src.gguf", "llama", n_rows=3000).read_bytes()  # ~3 MB


def test_register_refuses_an_existing_name_unless_forced(tmp_store, demo_model, tmp_path):
    tmp_store.register("default", demo_model, source="test")
    other = write_gguf_with_architecture(tmp_path / "other.gguf", "llama", n_rows=10)
    with pytest.raises(ConfigError, match="already has a model named 'default'.*force") as error:
        tmp_store.register("default", other, source="attack")
    assert "\n" not in str(error.value)
    assert tmp_store.get("default").file == demo_model.resolve()
    assert tmp_store.register("default", other, source="user", force=True).file == other.resolve()


def test_two_pulls_of_one_url_share_one_download(tmp_store, gguf_bytes):
    """Row 11: the second pull starts while the first downloads; one consistent model results."""
    results: dict[str, object] = {}
    started = threading.Event()

    def run(label: str, progress=None) -> None:
        try:
            results[label] = pull(url, store=tmp_store, progress=progress)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            results[label] = exc

    with FileServer({"m.gguf": gguf_bytes}) as server:
        server.pieces, server.pause = 30, 0.05  # ~1.5 s of transfer
        url = f"{server.url}/m.gguf"
        first = threading.Thread(target=run, args=("first", lambda p: p.done and started.set()))
        first.start()
        assert started.wait(30)
        second = threading.Thread(target=run, args=("second",))
        second.start()
        first.join(60)
        second.join(60)
        assert len(server.ranges) == 1, server.ranges  # one download, shared
    digest = hashlib.sha256(gguf_bytes).hexdigest()
    one, two = results["first"], results["second"]
    assert not isinstance(one, BaseException) and not isinstance(two, BaseException), results
    assert one.sha256 == two.sha256 == digest and one.size_bytes == two.size_bytes == len(gguf_bytes)
    stored = tmp_store.get("m")
    assert stored.sha256 == digest and stored.file.read_bytes() == gguf_bytes
    assert not list(tmp_store.root.rglob("*.part"))


def test_a_failed_pull_leaves_no_folder(tmp_store):
    with FileServer({}) as server:
        with pytest.raises(SourceUnreachableError, match="HTTP 404"):
            pull(f"{server.url}/missing.gguf", store=tmp_store)
    assert not tmp_store.models_dir.exists() or not list(tmp_store.models_dir.iterdir())
    assert tmp_store.find("missing") is None


def test_public_only_refuses_loopback_with_the_message_of_a_missing_host(tmp_store, gguf_bytes):
    with FileServer({"m.gguf": gguf_bytes}) as server:
        with pytest.raises(SourceUnreachableError) as refused:
            pull(f"{server.url}/m.gguf", store=tmp_store, public_only=True)
        assert server.ranges == []  # no request reached it
    with pytest.raises(SourceUnreachableError) as missing:
        pull("http://no-such-host.invalid/m.gguf", store=tmp_store, public_only=True)
    assert str(refused.value) == str(missing.value) and "\n" not in str(refused.value)
    assert not tmp_store.models_dir.exists() or not list(tmp_store.models_dir.iterdir())


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/x.gguf", "http://localhost:8888/x.gguf", "http://169.254.169.254/latest/meta-data",
    "http://10.0.0.1/x.gguf", "http://192.168.1.1/x.gguf", "http://100.64.0.1/x.gguf", "http://[::1]/x.gguf",
    "http://[fe80::1]/x.gguf", "http://[::ffff:127.0.0.1]/x.gguf", "http://0.0.0.0/x.gguf", "ftp://8.8.8.8/x",
])
def test_every_private_address_is_refused(url):
    with pytest.raises(SourceUnreachableError, match="unknown, unreachable or not allowed"):
        check_public_url(url)


def test_the_library_still_pulls_from_loopback(tmp_store, gguf_bytes):
    with FileServer({"m.gguf": gguf_bytes}) as server:
        assert pull(f"{server.url}/m.gguf", store=tmp_store).sha256 == hashlib.sha256(gguf_bytes).hexdigest()


def test_cancelling_a_stalled_download_ends_it_within_a_second(tmp_store, gguf_bytes):
    cancel = threading.Event()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            pull(url, store=tmp_store, cancel=cancel)
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    with FileServer({"m.gguf": gguf_bytes}) as server:
        server.pieces, server.pause = 200, 0.3  # a minute of trickle: the reader blocks between pieces
        url = f"{server.url}/m.gguf"
        worker = threading.Thread(target=run)
        worker.start()
        wait_until(lambda: server.ranges, "the transfer to start", 30)
        asked = time.monotonic()
        cancel.set()
        worker.join(10)
        took = time.monotonic() - asked
    assert not worker.is_alive() and took < 1.0, took
    assert len(outcome) == 1 and isinstance(outcome[0], OperationCancelledError), outcome
    assert tmp_store.find("m") is None
    assert not tmp_store.models_dir.exists() or not list(tmp_store.models_dir.iterdir())


def test_an_interrupted_pull_keeps_its_part_synced_and_resumes_from_it(tmp_store, gguf_bytes, monkeypatch):
    """Ctrl-C in the middle of a transfer (issue 15, item 4): the part is flushed and fsynced before
    KeyboardInterrupt propagates, holds every byte received, and the next pull resumes from its size."""
    import os

    import llamalab.partfile

    synced = []

    def recording_fsync(fd):
        real_fsync(fd)
        synced.append((os.fstat(fd).st_ino, os.fstat(fd).st_size))

    def interrupt(event):
        if event.done >= 2**20 and event.stage.startswith("downloading"):
            seen.append(event.done)
            raise KeyboardInterrupt

    real_fsync, seen = os.fsync, []
    monkeypatch.setattr(llamalab.partfile.os, "fsync", recording_fsync)
    with FileServer({"m.gguf": gguf_bytes}) as server:
        url = f"{server.url}/m.gguf"
        with pytest.raises(KeyboardInterrupt):
            pull(url, store=tmp_store, progress=interrupt)
        part = tmp_store.model_dir("m") / "m.gguf.part"
        assert part.read_bytes() == gguf_bytes[:seen[0]] and (part.stat().st_ino, seen[0]) in synced
        assert tmp_store.find("m") is None
        model = pull(url, store=tmp_store)
        assert server.ranges[-1] == f"bytes={seen[0]}-"
    assert model.sha256 == hashlib.sha256(gguf_bytes).hexdigest() and model.file.read_bytes() == gguf_bytes
