"""``RemoteEngine.list_models`` against a hostile ``/v1/models``: a small HTTP server started in the
test (``http.server`` on a free port, in a thread) answers whatever body the test sets."""

from __future__ import annotations

import json

import pytest

from llamalab import RemoteEngine, ServerResponseError, ServerUnreachableError
from llamalab.engine.remote import MAX_LISTED_MODELS, MAX_MODEL_ID_CHARS
from tests.conftest import free_port
from tests.fixtures.models_server import running_models_server


@pytest.fixture
def hostile():
    """A server whose every GET answers ``server.body`` with ``server.status``."""
    with running_models_server() as server:
        yield server


def _engine(server) -> RemoteEngine:
    return RemoteEngine(f"http://127.0.0.1:{server.server_address[1]}", timeout=10, connect_timeout=5)


def _serve(server, entries: object) -> None:
    server.body = json.dumps({"object": "list", "data": entries}).encode()  # entries as given, objects or not


def test_at_most_the_first_hundred_ids_are_kept(hostile):
    _serve(hostile, [{"id": f"model-{i}"} for i in range(10_000)])
    with _engine(hostile) as remote:
        ids = remote.list_models()
    assert ids == [f"model-{i}" for i in range(MAX_LISTED_MODELS)]
    assert hostile.paths == ["/v1/models"]


def test_ids_that_are_not_short_strings_are_skipped(hostile):
    huge = "x" * 1_000_000
    _serve(hostile, [{"id": huge}, {"id": 7}, {"id": None}, {"id": ["a"]}, {"id": {"a": 1}}, "not-an-object", 12,
                     {"no-id": "a"}, {"id": ""}, {"id": "bad\nline"}, {"id": "x" * (MAX_MODEL_ID_CHARS + 1)},
                     {"id": "y" * MAX_MODEL_ID_CHARS}, {"id": "good"}, {"id": "good"}, {"id": "other"}])
    with _engine(hostile) as remote:
        assert remote.list_models() == ["y" * MAX_MODEL_ID_CHARS, "good", "other"]


def test_an_answer_without_a_model_list_is_a_response_error(hostile):
    with _engine(hostile) as remote:
        for body in (b"[1, 2]", b"not json", b'{"data": "everything"}', b'{"data": {"id": "a"}}'):
            hostile.body = body
            with pytest.raises(ServerResponseError, match="without a model list"):
                remote.list_models()
        _serve(hostile, [])
        assert remote.list_models() == []  # an empty listing is not an error here


def test_an_error_status_names_the_route_and_the_hint(hostile):
    hostile.status, hostile.body = 401, b'{"error": {"message": "bad key"}}'
    with _engine(hostile) as remote:
        with pytest.raises(ServerResponseError, match=r"/v1/models answered HTTP 401: bad key; the server wants a valid key: set LLAMALAB_REMOTE_API_KEY"):
            remote.list_models()


def test_an_answer_over_the_size_cap_is_refused_without_reading_it_all(hostile):
    hostile.body = b'{"data": [' + b'{"id": "a"},' * (2 << 20) + b'{"id": "b"}]}'  # ~24 MiB
    with _engine(hostile) as remote:
        with pytest.raises(ServerResponseError, match="answered more than 16 MiB"):
            remote.list_models()


def test_nobody_listening_is_unreachable_and_messages_hide_credentials():
    url = f"http://someone:hunter2@127.0.0.1:{free_port()}/v1?api_key=hunter2"
    with RemoteEngine(url, timeout=5, connect_timeout=5) as remote:
        assert "hunter2" not in remote.shown_url and remote.shown_url.startswith("http://127.0.0.1:")
        with pytest.raises(ServerUnreachableError) as caught:
            remote.list_models()
    assert "cannot reach" in str(caught.value) and "hunter2" not in str(caught.value)


@pytest.mark.parametrize(("url", "shown"), [
    ("http://user:secret@team.example:8000/v1?key=k#frag", "http://team.example:8000/v1"),
    ("https://[::1]:9000/", "https://[::1]:9000"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
])
def test_redact_url(url, shown):
    assert RemoteEngine.redact_url(url) == shown


def test_an_html_error_page_is_reported_as_its_text(hostile):
    """A proxy or plain web server answers errors as HTML pages: the message keeps their text, not the markup."""
    hostile.status = 502
    hostile.body = (b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title><style>body{color:red}</style></head>"
                    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>")
    with _engine(hostile) as remote:
        with pytest.raises(ServerResponseError) as info:
            remote.list_models()
    message = str(info.value)
    assert "answered HTTP 502: 502 Bad Gateway nginx" in message
    assert "<" not in message and "color" not in message


def test_a_server_that_does_not_implement_post_has_no_tokenize_and_doctor_says_so(hostile):
    """Python's http.server answers an unknown method with 501 and an HTML page: the tokenize route is
    missing (the fallback is named), not a failure of the whole probe; doctor shows the URL without
    its credentials."""
    from llamalab.doctor import probe_remote, remote_lines

    _serve(hostile, [{"id": "team-model"}])
    server = probe_remote(f"http://alice:secret@127.0.0.1:{hostile.server_address[1]}/?token=abc")
    assert server.problem is None, server.problem
    assert server.models == ["team-model"] and server.tokenize is False
    shown = "\n".join(remote_lines(server))
    assert "secret" not in shown and "token=abc" not in shown and "alice" not in shown
    assert "no tokenize route: token counts are approximate" in shown
