"""Downloading from Meta's signed URL against a real loopback server (tests/fixtures/meta_server.py).

The trees the server serves are laid out by the fixture from download.sh's rules, written
independently of llamalab's tables, so a wrong folder, shard count or file name fails here.
"""

from __future__ import annotations

import collections
import time

import click
import pytest
from click.testing import CliRunner

import llamalab.fetch
import llamalab.meta_download
import llamalab.partfile
from llamalab import (ChecksumMismatchError, ConfigError, InsufficientDiskSpaceError, LicenseNotAcceptedError,
                      ModelNotFoundError, ModelStore, PullError, SignedUrlExpiredError, SourceUnreachableError)
from llamalab.cli import download_cmd
from llamalab.cli.download_cmd import download
from llamalab.cli.main import _Group
from llamalab.license import accept_license, accepted_at
from llamalab.meta_download import TOTAL_STAGE, download_meta
from llamalab.meta_layout import META_FORM_URL, MODELS, parse_signed_url, plan_download, resolve_models
from tests.fixtures.meta_server import LOGIN_PAGE, MetaServer, codellama_tree, llama2_tree

BIG = 2_500_000  # bytes: more than one 1 MiB chunk, so a cut transfer leaves a resumable part
SHARD = "llama-2-7b/consolidated.00.pth"


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(llamalab.meta_download, "_RETRY_WAIT_S", 0.01)


@pytest.fixture()
def out(tmp_path):
    """The download folder (the store lives beside it, in tmp_path / "home")."""
    return tmp_path / "out"


@pytest.fixture()
def store(tmp_store):
    """A private store in which the Llama 2 licence was accepted."""
    accept_license("llama2", tmp_store)
    return tmp_store


def tree_on_disk(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def fetch(server, models, out, store, **kwargs):
    return download_meta(kwargs.pop("url", None) or server.signed_url(), models, out=out, store=store, **kwargs)


def fake_free_space(monkeypatch, free):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(llamalab.fetch.shutil, "disk_usage", lambda _: usage(10**13, 10**13 - free, free))


# -- the layout ------------------------------------------------------------------------------
def test_llama2_tree_matches_download_sh(out, store):
    served = llama2_tree(("7B", "13B-chat", "70B"))
    with MetaServer(served) as server:
        result = fetch(server, ["7B", "13B-chat", "70B"], out / "out", store)
    assert tree_on_disk(out / "out") == served
    assert sum(1 for p in served if p.startswith("llama-2-70b/consolidated.")) == 8
    assert result.model_dirs == tuple(out / "out" / f for f in ("llama-2-7b", "llama-2-13b-chat", "llama-2-70b"))
    assert set(result.downloaded) == set(served) - {"tokenizer_checklist.chk", "llama-2-7b/checklist.chk",
                                                    "llama-2-13b-chat/checklist.chk", "llama-2-70b/checklist.chk"}
    assert result.bytes_downloaded == sum(len(served[p]) for p in result.downloaded)


def test_codellama_tree_matches_download_sh(out, store):
    served = codellama_tree(("7b", "34b-Python", "13b-Instruct"))
    with MetaServer(served) as server:
        result = fetch(server, ["7b", "34b-python", "CodeLlama-13b-Instruct"], out, store, family="codellama")
    on_disk = tree_on_disk(out)
    assert on_disk == served
    assert "tokenizer.model" not in on_disk and "CodeLlama-34b-Python/consolidated.03.pth" in on_disk
    assert [m.folder for m in result.models] == ["CodeLlama-7b", "CodeLlama-34b-Python", "CodeLlama-13b-Instruct"]


def test_names_folders_and_shards_are_download_sh_s():
    expected = {"7B": ("llama-2-7b", 1), "13B": ("llama-2-13b", 2), "70B": ("llama-2-70b", 8),
                "7B-chat": ("llama-2-7b-chat", 1), "13B-chat": ("llama-2-13b-chat", 2),
                "70B-chat": ("llama-2-70b-chat", 8)}
    for size, shards in (("7b", 1), ("13b", 2), ("34b", 4), ("70b", 8)):
        for variant in ("", "-Python", "-Instruct"):
            expected[size + variant] = (f"CodeLlama-{size}{variant}", shards)
    assert {m.name: (m.folder, m.shards) for m in MODELS} == expected
    # "press Enter for all", in download.sh's order
    assert [m.name for m in resolve_models(None)] == ["7B", "13B", "70B", "7B-chat", "13B-chat", "70B-chat"]
    assert [m.name for m in resolve_models(None, "codellama")][:5] == ["7b", "13b", "34b", "70b", "7b-Python"]
    # bare sizes exist in both families: --family decides; other spellings are unambiguous
    assert resolve_models(["7b"])[0].folder == "llama-2-7b"
    assert resolve_models(["7B"], "codellama")[0].folder == "CodeLlama-7b"
    assert [m.folder for m in resolve_models(["7b-chat,34B-PYTHON", "llama-2-7b-chat"])] == \
        ["llama-2-7b-chat", "CodeLlama-34b-Python"]
    plan = plan_download(resolve_models(["13B-chat"]))
    assert [f.path for f in plan.files] == ["LICENSE", "USE_POLICY.md", "tokenizer.model",
                                            "llama-2-13b-chat/consolidated.00.pth",
                                            "llama-2-13b-chat/consolidated.01.pth", "llama-2-13b-chat/params.json"]
    assert plan.checklists == ("tokenizer_checklist.chk", "llama-2-13b-chat/checklist.chk")
    plan = plan_download(resolve_models(["70b-Instruct"]))  # its own tokenizer, none at the top
    assert [f.path for f in plan.files] == ["LICENSE", "USE_POLICY.md"] + [
        f"CodeLlama-70b-Instruct/{name}" for name in [f"consolidated.0{i}.pth" for i in range(8)]
        + ["params.json", "tokenizer.model"]]
    assert plan.checklists == ("CodeLlama-70b-Instruct/checklist.chk",)


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(ModelNotFoundError, match=r"unknown model '8B'.*7B-chat.*13b-Instruct"):
        resolve_models(["7B,8B"])


def test_signed_url_is_checked_and_tidied():
    good = "https://cdn.example.org/*?Policy=abc&Signature=def&Key-Pair-Id=K"
    assert parse_signed_url(f" '{good[:30]}\n{good[30:]}' ").template == good
    assert parse_signed_url(good).for_path("llama-2-7b/params.json").startswith(
        "https://cdn.example.org/llama-2-7b/params.json?Policy=abc")
    wrapped = "https://l.example.com/l.php?u=https%3A%2F%2Fcdn.example.org%2F%2A%3FPolicy%3Dabc&h=x"
    assert parse_signed_url(wrapped).template == "https://cdn.example.org/*?Policy=abc"
    assert parse_signed_url(good).display == "https://cdn.example.org/*"
    for bad in ("https://cdn.example.org/llama?Policy=abc", "cdn.example.org/*?Policy=abc"):
        with pytest.raises(ConfigError, match="contain a '\\*'"):
            parse_signed_url(bad)


# -- interrupted and damaged transfers ---------------------------------------------------------
def test_cut_transfer_resumes_with_range_from_the_last_byte_received(out, store):
    served = llama2_tree(("7B",), shard_size=BIG)
    with MetaServer(served) as server:
        server.cut[SHARD] = (1_500_001, 1)  # not a multiple of any buffer: every byte received is kept
        fetch(server, ["7B"], out, store)
        gets = server.gets(SHARD)
    assert [g.range for g in gets] == [None, "bytes=1500001-"]
    assert (out / SHARD).read_bytes() == served[SHARD]
    assert not list(out.rglob("*.part"))


def test_cut_job_resumes_on_the_next_run_and_parts_never_look_finished(out, store):
    served = llama2_tree(("7B",), shard_size=4_000_000)
    with MetaServer(served) as server:
        server.cut[SHARD] = (1_000_003, 3)  # more cuts than retries: this run fails, each try adding 1,000,003 bytes
        with pytest.raises(SourceUnreachableError, match="run the same command again to resume"):
            fetch(server, ["7B"], out, store)
        part = out / (SHARD + ".part")
        assert not (out / SHARD).exists() and part.stat().st_size == 3 * 1_000_003
        assert [g.range for g in server.gets(SHARD)] == [None, "bytes=1000003-", "bytes=2000006-"]
        start, sent = server.sent[SHARD]  # what the last, cut transfer put on the wire: all of it kept
        assert start == 2_000_006 and part.read_bytes()[start:] == sent
        assert part.read_bytes() == served[SHARD][:3 * 1_000_003]
        for path, data in tree_on_disk(out).items():  # anything under its final name is complete
            assert path.endswith(".part") or data == served[path], path
        result = fetch(server, ["7B"], out, store)
        assert server.gets(SHARD)[-1].range == "bytes=3000009-"
    assert tree_on_disk(out) == served and SHARD in result.downloaded  # md5-verified against checklist.chk


def test_interrupted_run_leaves_its_parts_synced_and_resumes_from_them(out, store, monkeypatch):
    """Ctrl-C in the middle of a shard: the part is flushed and fsynced before the interrupt goes on."""
    served = llama2_tree(("7B",), shard_size=BIG)
    synced = []
    real_fsync = llamalab.partfile.os.fsync

    def recording_fsync(fd):
        real_fsync(fd)
        synced.append((llamalab.partfile.os.fstat(fd).st_ino, llamalab.partfile.os.fstat(fd).st_size))

    def interrupt(event):
        if event.stage == SHARD and event.done >= 2**20:
            seen.append(event.done)
            raise KeyboardInterrupt

    seen = []
    monkeypatch.setattr(llamalab.partfile.os, "fsync", recording_fsync)
    with MetaServer(served) as server:
        with pytest.raises(KeyboardInterrupt):
            fetch(server, ["7B"], out, store, jobs=1, progress=interrupt)
        part = out / (SHARD + ".part")
        assert part.read_bytes() == served[SHARD][:seen[0]]
        assert (part.stat().st_ino, seen[0]) in synced  # synced at exactly what it holds
        fetch(server, ["7B"], out, store)
        assert server.gets(SHARD)[-1].range == f"bytes={seen[0]}-"
    assert tree_on_disk(out) == served


def test_ctrl_c_stops_every_transfer_with_its_part_synced(out, store, monkeypatch):
    """Ctrl-C reaches the main thread while two shards transfer in workers: each part left behind
    holds exactly the bytes received and was fsynced at that size; the next run finishes the job."""
    import signal
    import threading

    served = llama2_tree(("13B",), shard_size=4_000_000)
    synced = set()
    real_fsync = llamalab.partfile.os.fsync

    def recording_fsync(fd):
        real_fsync(fd)
        synced.add((llamalab.partfile.os.fstat(fd).st_ino, llamalab.partfile.os.fstat(fd).st_size))

    def ctrl_c_once(event):
        if event.stage.endswith(".pth") and event.done >= 2**20 and not pressed:
            pressed.append(event.stage)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # as the terminal sends it
            assert sessions[-1].tracker.cancel.wait(30)  # this transfer goes on until the run stops

    pressed, sessions = [], []
    real_init = llamalab.meta_download._Session.__init__

    def recording_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        sessions.append(self)

    monkeypatch.setattr(llamalab.meta_download._Session, "__init__", recording_init)
    monkeypatch.setattr(llamalab.partfile.os, "fsync", recording_fsync)
    with MetaServer(served) as server:
        with pytest.raises(KeyboardInterrupt):
            fetch(server, ["13B"], out, store, jobs=2, progress=ctrl_c_once)
        parts = list(out.rglob("*.pth.part"))
        assert out / (pressed[0] + ".part") in parts
        for part in parts:
            shard = part.relative_to(out).as_posix()[:-len(".part")]
            assert part.read_bytes() == served[shard][:part.stat().st_size]
            assert (part.stat().st_ino, part.stat().st_size) in synced
        fetch(server, ["13B"], out, store)
    assert tree_on_disk(out) == served


def test_md5_mismatch_downloads_the_file_again_once(out, store):
    served = llama2_tree(("7B",))
    with MetaServer(served) as server:
        server.corrupt[SHARD] = 1
        result = fetch(server, ["7B"], out, store)
        assert [g.range for g in server.gets(SHARD)] == [None, None]
    assert (out / SHARD).read_bytes() == served[SHARD] and SHARD in result.downloaded


def test_always_wrong_file_fails_clearly_and_leaves_nothing(out, store):
    with MetaServer(llama2_tree(("7B",))) as server:
        server.corrupt[SHARD] = -1
        with pytest.raises(ChecksumMismatchError, match=r"consolidated.00.pth failed its md5 check twice.*"
                                                        r"checklist.chk says"):
            fetch(server, ["7B"], out, store, jobs=1)
        assert len(server.gets(SHARD)) == 2
    assert not (out / SHARD).exists() and not (out / (SHARD + ".part")).exists()


def test_partial_file_left_by_wget_is_resumed(out, store):
    served = llama2_tree(("7B",), shard_size=BIG)
    (out / "llama-2-7b").mkdir(parents=True)
    (out / SHARD).write_bytes(served[SHARD][:1_200_000])  # download.sh's wget, interrupted
    with MetaServer(served) as server:
        fetch(server, ["7B"], out, store)
        assert server.gets(SHARD)[-1].range == "bytes=1200000-"
    assert tree_on_disk(out) == served


# -- refused URLs and error pages ---------------------------------------------------------------
@pytest.mark.parametrize("how", ["expired", "bad_signature"])
def test_expired_or_forged_url_is_explained(out, store, how):
    with MetaServer(llama2_tree(("7B",))) as server:
        url = server.signed_url(-5) if how == "expired" else server.signed_url(bad_signature=True)
        with pytest.raises(SignedUrlExpiredError) as caught:
            fetch(server, ["7B"], out, store, url=url)
    message = str(caught.value)
    assert "HTTP 403" in message and "request a new URL" in message and META_FORM_URL in message
    assert "Signature" not in message and "\n" not in message
    assert tree_on_disk(out) == {}


def test_overused_url_then_a_new_url_finishes_the_job(out, store):
    served = llama2_tree(("13B",))
    with MetaServer(served, max_uses=5) as server:
        with pytest.raises(SignedUrlExpiredError, match="used too many times"):
            fetch(server, ["13B"], out, store, jobs=1)
        kept = {p for p in tree_on_disk(out) if not p.endswith(".part")}
        assert len(kept) == 5 and all(tree_on_disk(out)[p] == served[p] for p in kept)
        before = {p: len(server.gets(p)) for p in served}
        result = fetch(server, ["13B"], out, store, jobs=1)  # a fresh URL from the "form"
        assert all(len(server.gets(p)) == before[p] for p in kept)  # verified files are not fetched again
    assert tree_on_disk(out) == served
    assert set(result.skipped) == kept - {"tokenizer_checklist.chk", "llama-2-13b/checklist.chk"}


def test_html_page_instead_of_a_checklist(out, store):
    with MetaServer(llama2_tree(("7B",))) as server:
        server.html["llama-2-7b/checklist.chk"] = LOGIN_PAGE
        with pytest.raises(SignedUrlExpiredError, match=r"web page instead of llama-2-7b/checklist.chk.*"
                                                        r"request a new URL from Meta's form"):
            fetch(server, ["7B"], out, store)
        assert not server.gets(SHARD)  # no weight was fetched
    assert not (out / "llama-2-7b" / "checklist.chk").exists()


def test_html_checklist_left_by_download_sh_is_fetched_again(out, store):
    served = llama2_tree(("7B",))
    (out / "llama-2-7b").mkdir(parents=True)
    (out / "llama-2-7b" / "checklist.chk").write_bytes(LOGIN_PAGE)
    with MetaServer(served) as server:
        fetch(server, ["7B"], out, store)
    assert tree_on_disk(out) == served


def test_html_page_instead_of_a_file(out, store):
    with MetaServer(llama2_tree(("7B",))) as server:
        server.html["llama-2-7b/params.json"] = LOGIN_PAGE
        with pytest.raises(SignedUrlExpiredError, match="web page instead of llama-2-7b/params.json"):
            fetch(server, ["7B"], out, store)
    assert not (out / "llama-2-7b" / "params.json").exists()


def test_missing_file_and_foreign_checklist(out, store):
    served = llama2_tree(("7B",))
    with MetaServer(served) as server:
        with pytest.raises(PullError, match=r"no llama-2-13b/checklist.chk \(HTTP 404\).*Code Llama"):
            fetch(server, ["13B"], out / "a", store)
        server.files["llama-2-7b/checklist.chk"] = served["llama-2-7b/checklist.chk"].replace(
            b"consolidated.00.pth", b"consolidated.09.pth")
        with pytest.raises(PullError, match="lists no md5 for llama-2-7b/consolidated.00.pth"):
            fetch(server, ["7B"], out / "b", store)


def test_unusable_output_folder_is_one_clear_error(tmp_path, store):
    (tmp_path / "a-file").write_text("not a folder")
    with MetaServer(llama2_tree(("7B",))) as server:
        with pytest.raises(PullError, match=r"cannot write .*a-file.*choose another --out folder"):
            fetch(server, ["7B"], tmp_path / "a-file" / "llama", store)


# -- the licence gate ---------------------------------------------------------------------------
def test_licence_gate_comes_before_any_request(out, tmp_store):
    with MetaServer(llama2_tree(("7B",))) as server:
        with pytest.raises(LicenseNotAcceptedError, match="--accept-license"):
            fetch(server, ["7B"], out, tmp_store)
        assert server.requests == []
        assert tree_on_disk(out) == {}
        fetch(server, ["7B"], out, tmp_store, accept_license=True)
        assert accepted_at("llama2", tmp_store) is not None
        assert "Llama 2 Community License" in (tmp_store.root / "licenses.json").read_text()
        fetch(server, ["7B"], out / "again", tmp_store)  # recorded: no acceptance needed any more


# -- parallelism, disk space, re-runs, progress ---------------------------------------------------
def test_transfers_run_in_parallel(out, store):
    served = llama2_tree(("70B",))
    timings = {}
    for jobs in (1, 4):
        with MetaServer(served) as server:
            server.body_delay = 0.1
            started = time.monotonic()
            fetch(server, ["70B"], out / f"jobs{jobs}", store, jobs=jobs)
            timings[jobs] = (time.monotonic() - started, server.max_active)
    assert timings[1][1] == 1 and timings[4][1] >= 3
    assert timings[4][0] < timings[1][0] * 0.6


def test_disk_space_is_checked_with_the_servers_sizes(out, store, monkeypatch):
    served = llama2_tree(("70B",), shard_size=BIG)  # 20 MB of shards
    fake_free_space(monkeypatch, 64 * 2**20 + 5_000_000)  # enough for the checklists, not the shards
    with MetaServer(served) as server:
        with pytest.raises(InsufficientDiskSpaceError, match=r"0\.02 GB needed.*choose another --out folder"):
            fetch(server, ["70B"], out, store)
        assert not [r for r in server.gets() if r.path.endswith(".pth")]
    assert not [p for p in tree_on_disk(out) if p.endswith((".pth", ".part"))]


def test_disk_space_falls_back_to_known_model_sizes_with_a_warning(out, store, monkeypatch, caplog):
    fake_free_space(monkeypatch, 10 * 10**9)
    with MetaServer(llama2_tree(("7B",))) as server:
        server.fail_probes = True  # neither HEAD nor a one-byte GET tells a size: 7B is about 13.5 GB
        with caplog.at_level("WARNING", logger="llamalab.meta_download"):
            with pytest.raises(InsufficientDiskSpaceError, match=r"13\.5\d GB needed"):
                fetch(server, ["7B"], out, store)
        warned = [r.getMessage() for r in caplog.records if r.name == "llamalab.meta_download"]
        assert any(SHARD in w and "approximate size" in w and "503" in w for w in warned), warned
        server.fail_probes = False  # the real sizes fit
        fetch(server, ["7B"], out, store)


@pytest.mark.parametrize("head_status", [405, 403])
def test_a_cdn_refusing_head_is_asked_for_one_byte_instead(out, store, monkeypatch, caplog, head_status):
    """HEAD refused (405, or 403 to HEAD alone) but GET served: the sizes come from a ranged GET's
    Content-Range, so the disk check is exact (the known 13.5 GB of a 7B would not fit here)."""
    fake_free_space(monkeypatch, 10 * 10**9)
    served = llama2_tree(("7B",))
    with MetaServer(served) as server:
        server.head_status = head_status
        with caplog.at_level("WARNING", logger="llamalab.meta_download"):
            result = fetch(server, ["7B"], out, store)
        probes = {r.path for r in server.gets() if r.range == "bytes=0-0"}
        assert all(r.status == 206 for r in server.gets() if r.range == "bytes=0-0")
    assert probes == {p for p in served if not p.endswith(".chk")}
    assert not [r for r in caplog.records if r.name == "llamalab.meta_download"]
    assert tree_on_disk(out) == served and SHARD in result.downloaded


def test_url_expiring_before_the_transfers_fails_before_any_download(out, store):
    """HEAD 403 because the URL expired: the one-byte GET is refused too, so the run stops with
    one line naming a file and saying what to do, and no file is fetched."""
    with MetaServer(llama2_tree(("7B",))) as server:
        server.expire_after_gets = 2  # the two checklists, then the URL runs out
        with pytest.raises(SignedUrlExpiredError) as caught:
            fetch(server, ["7B"], out, store)
        transfers = [r for r in server.gets() if not r.path.endswith(".chk") and r.range != "bytes=0-0"]
        heads = [r for r in server.requests if r.method == "HEAD"]
    message = str(caught.value)
    assert transfers == [] and heads and {r.status for r in heads} == {403}
    assert "\n" not in message and "Signature" not in message
    assert "HTTP 403 to HEAD and to GET" in message and "24 hours" in message and "--meta-url" in message
    assert META_FORM_URL in message and any(f"refused {path} " in message for path in llama2_tree(("7B",)))
    assert [p for p in tree_on_disk(out) if not p.endswith(".chk")] == []


def test_rerun_skips_verified_files_and_repairs_damaged_ones(out, store):
    served = llama2_tree(("7B-chat",))
    shard = "llama-2-7b-chat/consolidated.00.pth"
    with MetaServer(served) as server:
        fetch(server, ["7B-chat"], out, store)
        requests = len(server.requests)
        again = fetch(server, ["7B-chat"], out, store)
        assert len(server.requests) == requests and again.downloaded == ()
        assert set(again.skipped) == {p for p in served if not p.endswith(".chk")}
        damaged = bytearray(served[shard])
        damaged[100] ^= 1
        (out / shard).write_bytes(bytes(damaged))
        repaired = fetch(server, ["7B-chat"], out, store)
    assert repaired.downloaded == (shard,) and tree_on_disk(out) == served


def test_progress_per_file_and_total(out, store):
    served = llama2_tree(("13B",))
    events = []
    with MetaServer(served) as server:
        fetch(server, ["13B"], out, store, progress=events.append)
    stages = {e.stage for e in events}
    assert {"llama-2-13b/consolidated.00.pth", "llama-2-13b/consolidated.01.pth", TOTAL_STAGE} <= stages
    last = [e for e in events if e.stage == TOTAL_STAGE][-1]
    expected = sum(len(data) for path, data in served.items() if not path.endswith(".chk"))
    assert last.done == last.total == expected


# -- the command -----------------------------------------------------------------------------------
def invoke(args, stdin=None):
    group = _Group("llamalab")
    group.add_command(download)
    return CliRunner().invoke(group, ["download"] + args, input=stdin)


def test_cli_downloads_with_accept_license(out, tmp_store):
    served = llama2_tree(("7B-chat",))
    with MetaServer(served) as server:
        result = invoke(["--meta-url", server.signed_url(), "--models", "7B-chat", "--out", str(out / "w"),
                         "--accept-license", "--jobs", "2"])
    assert result.exit_code == 0, result.output
    assert tree_on_disk(out / "w") == served
    assert accepted_at("llama2", ModelStore(tmp_store.root)) is not None
    assert "700 million monthly active users" in result.stderr
    assert "llama-2-7b-chat" in result.stdout and "llamalab convert" in result.stdout


def test_cli_shows_the_approximate_size_warning(out, tmp_store):
    with MetaServer(llama2_tree(("7B",))) as server:
        server.fail_probes = True
        result = invoke(["--meta-url", server.signed_url(), "--models", "7B", "--out", str(out),
                         "--accept-license"])
    assert result.exit_code == 0, result.output
    assert f"warning: Meta's server did not tell the size of {SHARD}" in result.stderr


def test_cli_without_acceptance_is_a_one_line_error(out, tmp_store):
    with MetaServer(llama2_tree(("7B",))) as server:
        result = invoke(["--meta-url", server.signed_url(), "--models", "7B", "--out", str(out)])
        assert server.requests == []
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if not line.startswith("Downloading")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--accept-license" in lines[0]


def test_cli_asks_on_a_terminal_once(out, tmp_store, monkeypatch):
    monkeypatch.setattr(download_cmd, "_stdin_is_terminal", lambda: True)
    served = llama2_tree(("7B",))
    with MetaServer(served) as server:
        args = ["--meta-url", server.signed_url(), "--models", "7B", "--out", str(out)]
        refused = invoke(args, stdin="n\n")
        assert refused.exit_code == 1 and "error: the licence was not accepted" in refused.stderr
        assert server.requests == [] and accepted_at("llama2", tmp_store) is None
        accepted = invoke(args, stdin="y\n")
        assert accepted.exit_code == 0, accepted.output
        assert "Do you accept" in accepted.stderr and accepted_at("llama2", tmp_store) is not None
        third = invoke(args, stdin="")
        assert third.exit_code == 0 and "Do you accept" not in third.stderr
    assert tree_on_disk(out) == served


@pytest.mark.parametrize("args, fragment", [
    (["--models", "7B,8B"], "unknown model '8B'"),
    (["--models", "7B", "--meta-url", "https://cdn.example.org/llama?Policy=x"], "not the URL from Meta's email"),
])
def test_cli_user_mistakes(tmp_store, args, fragment):
    if "--meta-url" not in args:
        args = args + ["--meta-url", "https://cdn.example.org/*?Policy=x"]
    result = invoke(args + ["--accept-license"])
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert fragment in result.stderr


def test_cli_usage_errors(tmp_store):
    assert invoke(["--meta-url", "https://x.example/*?a", "--jobs", "0"]).exit_code == 2
    missing = invoke([])
    assert missing.exit_code == 2 and "--meta-url is required" in missing.stderr
    assert isinstance(download, click.Command) and download.name == "download"


def test_download_bars_follow_parallel_files(capsys):
    from llamalab.progress import Progress

    bars = download_cmd.DownloadBars(enabled=True)
    for done in (0, 500, 1000):
        bars(Progress("m/consolidated.00.pth", done, 1000))
        bars(Progress("m/consolidated.01.pth", done // 2, 1000))
        bars(Progress(TOTAL_STAGE, done + done // 2, 2000))
    assert set(bars._bars) == {TOTAL_STAGE, "m/consolidated.01.pth"}  # a finished file's bar is gone
    bars.close()
    assert bars._bars == {} and "total" in capsys.readouterr().err
