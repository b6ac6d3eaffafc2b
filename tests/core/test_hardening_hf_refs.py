"""Issue 13, extra finding: ``hf:`` references accepted ``../`` in their file part.

Every part of ``hf:OWNER/REPO/FILE.gguf[@REVISION]`` is now checked: a ``..`` or ``.``
segment, an absolute path, a backslash, an empty segment or a control character anywhere
is refused with one ``ConfigError`` line, before anything is fetched.
"""

from __future__ import annotations

import pytest

from llamalab.catalog import HubFile, resolve
from llamalab.errors import ConfigError, ModelNotFoundError


def _refused(ref: str, fragment: str) -> str:
    with pytest.raises(ConfigError) as info:
        resolve(ref)
    message = str(info.value)
    assert fragment in message, message
    assert "\n" not in message and "\r" not in message and len(message) < 400, message
    assert "hf:OWNER/REPO/FILE.gguf" in message, "the message says how to write one"
    return message


@pytest.mark.parametrize("ref", [
    "hf:owner/repo/../../../etc/model.gguf",
    "hf:owner/repo/sub/../../x.gguf",
    "hf:owner/repo/./x.gguf",
    "hf:owner/repo/sub/./../x.gguf",
])
def test_dot_segments_in_the_file_part_are_refused(ref):
    _refused(ref, "segment")


@pytest.mark.parametrize("ref", ["hf:owner/repo/..", "hf:owner/repo/x.gguf@", "hf:not-a-file"])
def test_references_of_the_wrong_shape_stay_model_not_found(ref):
    with pytest.raises(ModelNotFoundError, match="hf:OWNER/REPO/FILE.gguf") as info:
        resolve(ref)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("ref", [
    "hf:../repo/x.gguf", "hf:owner/../x.gguf", "hf:../../x.gguf", "hf:owner/re..po/x.gguf",
    "hf:.hidden/repo/x.gguf", "hf:-owner/repo/x.gguf", "hf:own er/repo/x.gguf",
])
def test_owner_and_repo_must_be_plain_hub_names(ref):
    _refused(ref, "not a plain Hub name")


@pytest.mark.parametrize("ref", ["hf:owner/repo//etc/passwd.gguf", "hf:/etc/passwd/x.gguf",
                                 "hf://etc/passwd.gguf"])
def test_absolute_paths_are_refused(ref):
    _refused(ref, "refusing Hub reference")


@pytest.mark.parametrize("ref", ["hf:owner/repo/a//b.gguf", "hf:owner//x.gguf", "hf:/repo/x.gguf",
                                 "hf:owner/repo/x.gguf@main//x", "hf:owner/repo/sub/.gguf@/x"])
def test_empty_segments_are_refused(ref):
    _refused(ref, "refusing Hub reference")


@pytest.mark.parametrize("ref", ["hf:owner/repo\\..\\x.gguf", "hf:owner/repo/sub\\..\\..\\x.gguf",
                                 "hf:owner/repo/x.gguf@main\\..", "hf:owner\\repo/x.gguf"])
def test_backslashes_are_refused(ref):
    _refused(ref, "backslash")


@pytest.mark.parametrize("ref", ["hf:owner/repo/x\x00.gguf", "hf:owner/repo/a\nb.gguf", "hf:own\ter/repo/x.gguf",
                                 "hf:owner/repo/x.gguf@ma\x1bin", "hf:owner/repo/\u202ex.gguf",
                                 "hf:owner/repo/a\u2028b.gguf", "hf:owner/repo/a\x85b.gguf"])
def test_control_characters_are_refused_and_not_echoed(ref):
    message = _refused(ref, "control or invisible character")
    assert not any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f for c in message)
    assert "\u202e" not in message and "\u2028" not in message


@pytest.mark.parametrize("ref", ["hf:owner/repo/x.gguf@../../main", "hf:owner/repo/x.gguf@./main",
                                 "hf:owner/repo/x.gguf@ma:in", "hf:owner/repo/x.gguf@/abs"])
def test_revisions_are_plain(ref):
    _refused(ref, "revision")


def test_a_huge_reference_is_not_echoed_whole():
    message = _refused("hf:owner/repo/" + "../" * 100_000 + "x.gguf", "segment")
    assert len(message) < 400


def test_ordinary_references_still_resolve():
    ref = resolve("hf:TheBloke/Llama-2-7B-GGUF/llama-2-7b.Q4_K_M.gguf")
    assert ref.source == HubFile(repo_id="TheBloke/Llama-2-7B-GGUF", filename="llama-2-7b.Q4_K_M.gguf")
    nested = resolve("hf:some_one/Repo.v2/sub/dir/model.Q8_0.gguf@refs/pr/1")
    assert nested.source == HubFile(repo_id="some_one/Repo.v2", filename="sub/dir/model.Q8_0.gguf",
                                    revision="refs/pr/1")
    assert resolve("hf:owner/repo/x.gguf@0123abcd").source.revision == "0123abcd"
    assert resolve("hf:owner/repo/mod\u00e8le..v2.gguf").source.filename == "mod\u00e8le..v2.gguf"
    assert resolve("hf:meta-llama/Llama-2-7b-chat-hf/x.gguf").source.gated
