"""``llamalab serve``: the real command on 127.0.0.1 with the demo model, its keys made by the
real CLI; auth, per-key limits, fairness between users, metrics, bad input, graceful stop."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import httpx
import pytest

from llamalab import KeyRing
from tests.conftest import TEST_HOME, free_port
from tests.fixtures.serve_process import ServeProcess, add_key
from tests.fixtures.waiting import wait_until

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"  # the model keeps counting: long answers


@pytest.fixture(scope="module")
def served(tmp_path_factory, demo_model):
    keys = tmp_path_factory.mktemp("serve") / "keys.json"
    names = {"alice": add_key(keys, "alice", "--max-concurrent", "8", "--max-tokens", "256"),
             "bob": add_key(keys, "bob"),
             "carol": add_key(keys, "carol", "--max-concurrent", "1"),
             "dave": add_key(keys, "dave"),
             "prometheus": add_key(keys, "prometheus", "--role", "metrics"),
             "ops": add_key(keys, "ops", "--role", "admin")}
    server = ServeProcess(TEST_HOME, keys, free_port(), ("--parallel", "2", "--n-ctx", "1024")).start()
    yield server, names
    assert server.stop() == 0, server.output()


def _auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _chat(url: str, key: str, **body) -> httpx.Response:
    payload = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "temperature": 0, **body}
    return httpx.post(url + "/v1/chat/completions", json=payload, headers=_auth(key), timeout=120)


class Stream:
    """A streamed completion read on a thread: when its first piece came, and how it ended."""

    def __init__(self, url: str, key: str, prompt: str = COUNTING, max_tokens: int = 64) -> None:
        self.first = threading.Event()
        self.done = threading.Event()
        self.events: list[dict] = []
        self.raw: list[str] = []
        self.status = 0
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
        self._thread = threading.Thread(target=self._read, args=(url, key, body), daemon=True)
        self._thread.start()

    def _read(self, url: str, key: str, body: dict) -> None:
        try:
            with httpx.stream("POST", url + "/v1/completions", json=body, headers=_auth(key), timeout=300) as reply:
                self.status = reply.status_code
                for line in reply.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    self.raw.append(line)
                    if line != "data: [DONE]":
                        self.events.append(json.loads(line[6:]))
                        if any(c.get("text") for c in self.events[-1].get("choices", [])):
                            self.first.set()
        except httpx.HTTPError as exc:
            self.raw.append(f"error: {exc}")
        finally:
            self.first.set()
            self.done.set()

    @property
    def finish_reason(self):
        for event in self.events:
            for choice in event.get("choices", []):
                if choice.get("finish_reason"):
                    return choice["finish_reason"]
        return None

    def wait(self, timeout: float = 300) -> "Stream":
        assert self.done.wait(timeout), "the stream did not end"
        return self


# -- keys -------------------------------------------------------------------------------
def test_every_route_but_health_needs_a_valid_key(served):
    server, keys = served
    assert httpx.get(server.url + "/health").json() == {"status": "ok", "model": "smollm2-135m-instruct:q4_1"}
    for route in ("/v1/models", "/metrics"):
        missing = httpx.get(server.url + route)
        assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]["message"]
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = httpx.get(server.url + route, headers=_auth("llk-" + "x" * 43))
        assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]["message"]
        assert httpx.get(server.url + route, headers={"Authorization": "Basic " + keys["bob"]}).status_code == 401
    listed = httpx.get(server.url + "/v1/models", headers=_auth(keys["bob"]))
    assert listed.status_code == 200 and listed.json()["data"][0]["id"] == "smollm2-135m-instruct:q4_1"
    assert _chat(server.url, keys["bob"]).json()["choices"][0]["message"]["content"]


def test_a_revoked_key_is_refused_from_its_next_request(served):
    server, keys = served
    assert _chat(server.url, keys["dave"]).status_code == 200
    KeyRing(server.keys_file).revoke("dave")  # what `llamalab serve keys revoke dave` does, server running
    refused = _chat(server.url, keys["dave"])
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    assert _chat(server.url, keys["bob"]).status_code == 200  # the others go on


def test_a_key_in_the_url_is_refused_and_kept_out_of_the_log(served):
    server, keys = served
    for query in (f"?api_key={keys['bob']}", f"?key={keys['bob']}", f"?x={keys['bob']}"):
        reply = httpx.get(server.url + "/v1/models" + query)
        assert reply.status_code == 400 and "Authorization header" in reply.json()["error"]["message"]
    wait_until(lambda: server.output().count("GET /v1/models") >= 3, "the access log lines")
    assert keys["bob"] not in server.output()


# -- limits -----------------------------------------------------------------------------
def test_max_tokens_over_the_keys_limit_is_a_clear_400(served):
    server, keys = served
    for body in ({"max_tokens": 1_000_000}, {"max_tokens": 300}, {"max_completion_tokens": 257}):
        reply = _chat(server.url, keys["alice"], **body)
        assert reply.status_code == 400, reply.text
        assert "over this key's limit of 256" in reply.json()["error"]["message"]
    assert _chat(server.url, keys["alice"], max_tokens=256).status_code == 200


def test_a_key_may_run_only_its_max_concurrent_requests(served):
    server, keys = served
    running = Stream(server.url, keys["carol"], max_tokens=200)
    assert running.first.wait(120) and running.status == 200
    second = _chat(server.url, keys["carol"])
    assert second.status_code == 429 and "limit" in second.json()["error"]["message"]
    assert _chat(server.url, keys["bob"]).status_code == 200  # another key is not held back
    running.wait()
    assert _chat(server.url, keys["carol"]).status_code == 200  # its turn again once the first ended


# -- fairness ---------------------------------------------------------------------------
def test_one_users_many_streams_do_not_keep_another_waiting(served):
    """Alice fills both slots and queues four more streams; Bob's one stream still starts while
    all of hers run or wait (without turns, it would wait for two of hers to end)."""
    server, keys = served
    alice = [Stream(server.url, keys["alice"], max_tokens=160) for _ in range(6)]
    wait_until(lambda: sum(s.first.is_set() for s in alice) >= 2, "alice's first two streams to start", 120)
    bob = Stream(server.url, keys["bob"], max_tokens=4)
    assert bob.first.wait(120)
    assert not any(s.done.is_set() for s in alice), "bob got his first token only after alice's streams ended"
    assert bob.wait().finish_reason == "length"
    for stream in alice:
        assert stream.wait().finish_reason in ("length", "stop"), stream.raw[-2:]


# -- metrics ----------------------------------------------------------------------------
def test_metrics_open_only_to_metrics_and_admin_keys_and_a_metrics_key_opens_nothing_else(served):
    """/metrics shows every user's usage: a person's key may not read it; Prometheus' key may read
    only it; an admin key both."""
    server, keys = served
    refused = httpx.get(server.url + "/metrics", headers=_auth(keys["bob"]))
    assert refused.status_code == 403 and "--role metrics" in refused.json()["error"]["message"]
    assert "user=" not in refused.text
    assert "llamalab_requests_total" in httpx.get(server.url + "/metrics", headers=_auth(keys["prometheus"])).text
    for route in ("/v1/models", "/props"):
        reply = httpx.get(server.url + route, headers=_auth(keys["prometheus"]))
        assert reply.status_code == 403 and "reads /metrics only" in reply.json()["error"]["message"], reply.text
    assert _chat(server.url, keys["prometheus"]).status_code == 403
    assert httpx.get(server.url + "/metrics", headers=_auth(keys["ops"])).status_code == 200
    assert _chat(server.url, keys["ops"]).status_code == 200


def test_metrics_count_requests_tokens_and_the_scheduler(served):
    server, keys = served
    assert _chat(server.url, keys["bob"], max_tokens=5).status_code == 200
    text = httpx.get(server.url + "/metrics", headers=_auth(keys["prometheus"])).text
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values['llamalab_requests_total{route="chat.completions",status="200",user="bob"}'] >= 1
    assert values['llamalab_generated_tokens_total{user="bob"}'] >= 1
    assert values["llamalab_slots"] == 2 and values["llamalab_kv_cells"] >= 1024
    for gauge in ("llamalab_slots_busy", "llamalab_queue_length", "llamalab_kv_cells_used",
                  "llamalab_prompt_cache_hits", "llamalab_tokens_per_second", "llamalab_first_token_seconds_count"):
        assert gauge in values


# -- bad input --------------------------------------------------------------------------
@pytest.mark.parametrize("body, status", [
    (b"{not json", 400),
    (b'{"messages": []}', 400),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}', 400),
    (b'{"messages": [{"role": "user", "content": "hi"}], "model": "/etc/passwd"}', 404),
])
def test_malformed_requests_get_a_4xx_in_openais_shape(served, body, status):
    server, keys = served
    reply = httpx.post(server.url + "/v1/chat/completions", content=body, headers=_auth(keys["bob"]))
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["message"]


def test_a_huge_body_is_refused_and_the_server_goes_on(served):
    server, keys = served
    huge = b'{"prompt": "' + b"a" * (9 << 20) + b'"}'
    try:
        reply = httpx.post(server.url + "/v1/completions", content=huge, headers=_auth(keys["bob"]), timeout=60)
        assert reply.status_code >= 400
    except httpx.HTTPError:
        pass  # tornado may close the connection instead of answering: either way nothing was read
    assert _chat(server.url, keys["bob"]).status_code == 200


def test_a_thousand_dropped_connections_leave_the_server_serving(served):
    server, keys = served
    request = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {keys['alice']}\r\n"
               "Content-Type: application/json\r\nContent-Length: 60\r\n\r\n{\"prompt\": \"hi\",").encode()
    for i in range(1000):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            if i % 2:
                sock.sendall(request)  # half a body, then gone
    assert _chat(server.url, keys["alice"]).status_code == 200
    text = httpx.get(server.url + "/metrics", headers=_auth(keys["ops"])).text
    assert "llamalab_requests_active 0.0" in text


# -- stopping ---------------------------------------------------------------------------
def _one_off_server(tmp_path: Path, *args: str) -> tuple[ServeProcess, str]:
    keys = tmp_path / "keys.json"
    key = add_key(keys, "erin", "--max-tokens", "2000")
    return ServeProcess(TEST_HOME, keys, free_port(), ("--parallel", "2", *args)).start(), key


def test_a_stop_lets_running_answers_finish(tmp_path, demo_model):
    server, key = _one_off_server(tmp_path, "--stop-grace", "120")
    stream = Stream(server.url, key, max_tokens=40)
    assert stream.first.wait(120)
    assert server.stop() == 0, server.output()
    assert stream.wait().finish_reason == "length" and stream.raw[-1] == "data: [DONE]"


def test_a_stop_past_its_grace_ends_streams_with_a_clear_reason(tmp_path, demo_model):
    server, key = _one_off_server(tmp_path, "--stop-grace", "0.2")
    stream = Stream(server.url, key, max_tokens=2000)
    assert stream.first.wait(120)
    assert server.stop() == 0, server.output()
    stream.wait()
    assert stream.raw[-1] != "data: [DONE]"  # nobody may take it for a whole answer
    assert "stopping" in stream.events[-1]["error"]["message"]


# -- the routes RemoteEngine and the suggestion service use ----------------------------------
def test_token_prompts_tokenize_detokenize_and_infill(served):
    server, keys = served
    auth = _auth(keys["bob"])
    text = "def add(a, b):\n    return"
    tokens = httpx.post(server.url + "/tokenize", json={"content": text}, headers=auth).json()["tokens"]
    assert httpx.post(server.url + "/detokenize", json={"tokens": tokens}, headers=auth).json()["content"] == text
    by_text, by_ids = (httpx.post(server.url + "/v1/completions", headers=auth, timeout=120, json={
        "prompt": prompt, "max_tokens": 8, "temperature": 0}).json()["choices"][0]["text"] for prompt in (text, tokens))
    assert by_ids and by_ids == by_text
    bad = httpx.post(server.url + "/detokenize", json={"tokens": [10 ** 9]}, headers=auth)
    assert bad.status_code == 400 and "vocabulary" in bad.json()["error"]["message"]
    native = httpx.post(server.url + "/completion", headers=auth, timeout=120, json={
        "prompt": tokens, "n_predict": 8, "temperature": 0}).json()
    assert native["content"] == by_text and native["stop"] is True and native["tokens_predicted"] >= 1
    props = httpx.get(server.url + "/props", headers=auth).json()
    assert props["default_generation_settings"]["n_ctx"] == 1024 and props["total_slots"] == 2
    no_fim = httpx.post(server.url + "/infill", headers=auth, json={"input_prefix": text, "input_suffix": "\n"})
    assert no_fim.status_code == 501 and "fill-in-the-middle" in no_fim.json()["error"]["message"]


def test_remote_engine_plans_suggestions_through_serve_as_on_the_local_model(tmp_path, tmp_path_factory):
    """The tiny Code Llama served by `llamalab serve`: RemoteEngine sees token prompts and FIM,
    the suggestion service plans the same tokens as on the local model, and the answer goes
    through /infill with the local model's text."""
    pytest.importorskip("sentencepiece")
    from llamalab import GenerationParams, ModelStore, RemoteEngine
    from tests.core.test_fim import code_llama as make
    from tests.fixtures.fim_remote import suggest_through_infill
    from tests.fixtures.greedy import first_divergence_margin

    maker = make.__wrapped__(tmp_path_factory)
    local, _sp = next(maker)
    gguf = Path(getattr(local.info.path, "path", local.info.path))
    home = tmp_path / "home"
    ModelStore(home).register("tiny-codellama", gguf, source=f"file:{gguf}")
    keys = tmp_path / "keys.json"
    key = add_key(keys, "frank")
    server = ServeProcess(home, keys, free_port(), ("-m", "tiny-codellama", "--n-ctx", "256", "--parallel", "1")).start()
    remote = RemoteEngine(server.url, api_key=key, timeout=60)
    routes: list[str] = []
    remote._client.event_hooks["request"].append(lambda request: routes.append(request.url.path))
    try:
        caps = remote.capabilities()
        assert caps.server == "llamalab serve" and caps.token_prompts and caps.infill and remote.context_size == 256
        tokens, text, expected = suggest_through_infill(remote, local, routes)
        if text != expected:  # two processes may part at a near-tie, nowhere else
            margin = first_divergence_margin(local, gguf, tokens, expected, text, 1.0)
            assert margin is not None and margin < 0.5, (expected, text)
        again = remote.complete_tokens(tokens, GenerationParams(max_tokens=4, temperature=0)).collect()
        assert again.reused_prompt_tokens and again.reused_prompt_tokens >= len(tokens) - 1  # the slot's cache
    finally:
        remote.close()
        assert server.stop() == 0, server.output()
        maker.close()


def test_doctor_describes_the_team_server(served):
    import subprocess
    import sys

    server, keys = served
    done = subprocess.run([sys.executable, "-m", "llamalab", "doctor", "--remote", server.url],
                          env={**server.env(), "LLAMALAB_REMOTE_API_KEY": keys["bob"]}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if "remote server" in x)
    assert "(llamalab serve) serves smollm2-135m-instruct:q4_1" in line and "2 slots" in line, line
    assert "token prompts yes" in line and "tokenize yes" in line


def test_tls_with_a_certificate(tmp_path, demo_model):
    """--certfile/--keyfile: HTTPS only, verified against the certificate; plain HTTP gets nothing."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    keys = tmp_path / "keys.json"
    api_key = add_key(keys, "hana")
    server = ServeProcess(TEST_HOME, keys, free_port(), ("--certfile", str(tmp_path / "cert.pem"),
                                                         "--keyfile", str(tmp_path / "key.pem")))
    server.health_url = f"https://127.0.0.1:{server.port}/health"
    server.verify = str(tmp_path / "cert.pem")
    try:
        server.start()
        https = f"https://127.0.0.1:{server.port}"
        reply = httpx.get(https + "/v1/models", headers=_auth(api_key), verify=str(tmp_path / "cert.pem"))
        assert reply.status_code == 200 and reply.json()["data"]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=10)
    finally:
        assert server.stop() == 0, server.output()

