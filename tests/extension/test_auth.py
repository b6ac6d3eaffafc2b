"""Every route needs Jupyter's authentication: no credentials or a wrong token is refused,
browser POSTs need the XSRF token, the WebSocket checks the origin, and the kernels' key
opens the inference routes only."""

from __future__ import annotations

import json
import re

import pytest
from tornado.httpclient import HTTPClientError

from llamalab.extension.completions import handlers as completion_handlers
from llamalab.extension.handlers import handlers as rest_handlers
from llamalab.extension.job_routes import handlers as job_handlers
from llamalab.extension.openai import handlers as openai_handlers


def _routes() -> list[tuple[str, str]]:
    routes = []
    for pattern, handler in rest_handlers() + openai_handlers() + completion_handlers() + job_handlers():
        path = re.sub(r"\(\?P<\w+>[^)]*\)", "abc123", pattern).lstrip("/")
        for method in ("get", "post", "patch", "put", "delete"):
            if any(method in cls.__dict__ for cls in handler.__mro__ if cls.__module__.startswith("llamalab")):
                routes.append((method.upper(), path))
    return routes


ROUTES = _routes()
BAD_CREDENTIALS = {"none": {"Authorization": ""}, "wrong token": {"Authorization": "token wrong"},
                   "wrong bearer": {"Authorization": "Bearer wrong"}}


def test_every_route_is_listed():
    paths = {path for _, path in ROUTES}
    assert {"llamalab/models", "llamalab/pulls", "llamalab/hardware", "llamalab/settings", "llamalab/v1/models",
            "llamalab/v1/completions", "llamalab/v1/chat/completions", "llamalab/tokenize",
            "llamalab/detokenize", "llamalab/infill", "llamalab/completion", "llamalab/props",
            "llamalab/complete", "llamalab/jobs", "llamalab/convert", "llamalab/quantize",
            "llamalab/jobs/abc123", "llamalab/jobs/abc123/events"} <= paths
    assert ("DELETE", "llamalab/jobs/abc123") in ROUTES
    assert ("PATCH", "llamalab/settings") in ROUTES and ("POST", "llamalab/pulls") in ROUTES


async def _status(jp_fetch, method: str, path: str, headers: dict[str, str]) -> int:
    body = json.dumps({"model": "default", "prompt": "hi", "messages": [{"role": "user", "content": "hi"}],
                       "content": "hi"}) if method not in ("GET", "DELETE") else None
    try:
        response = await jp_fetch(*path.split("/"), method=method, body=body, headers=dict(headers))
    except HTTPClientError as exc:
        return exc.code
    return response.code


@pytest.mark.parametrize("credentials", sorted(BAD_CREDENTIALS))
async def test_every_route_refuses_missing_or_wrong_credentials(jp_fetch, jp_ws_fetch, credentials, extension):
    headers = BAD_CREDENTIALS[credentials]
    for method, path in ROUTES:
        assert await _status(jp_fetch, method, path, headers) == 403, (method, path, credentials)
    with pytest.raises(HTTPClientError) as refused:
        await jp_ws_fetch("llamalab", "chat", headers=dict(headers))
    assert refused.value.code == 403
    assert extension.manager.loaded is None  # nothing was generated, nothing loaded


async def test_kernel_key_opens_the_inference_routes_only(jp_fetch, jp_ws_fetch, extension):
    key = {"Authorization": f"Bearer {extension.kernel_key}"}
    assert await _status(jp_fetch, "GET", "llamalab/v1/models", key) == 200
    assert await _status(jp_fetch, "POST", "llamalab/tokenize", key) == 200
    for method, path in ROUTES:
        if "/v1/" not in path and not path.endswith(("tokenize", "infill", "completion", "props")):
            assert await _status(jp_fetch, method, path, key) == 403, (method, path)
    with pytest.raises(HTTPClientError) as refused:
        await jp_ws_fetch("llamalab", "chat", headers=key)
    assert refused.value.code == 403


def _login_cookie(response) -> str:
    cookies = [c.split(";")[0] for c in response.headers.get_list("Set-Cookie")]
    login = [c for c in cookies if c.startswith("username-")]
    assert login, cookies
    return login[0]


async def test_browser_posts_need_the_xsrf_token(jp_fetch, jp_http_port):
    host = {"Host": f"localhost:{jp_http_port}"}
    cookie = _login_cookie(await jp_fetch("llamalab", "settings", headers=dict(host)))  # token login sets it
    as_browser = {**host, "Authorization": "", "Cookie": cookie}
    assert (await jp_fetch("llamalab", "settings", headers=dict(as_browser))).code == 200  # GET: the cookie is enough
    body = json.dumps({"system_prompt": "x"})
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch("llamalab", "settings", method="PATCH", body=body, headers=dict(as_browser))
    assert refused.value.code == 403
    xsrf = "0123456789abcdef"
    with_xsrf = {**as_browser, "Cookie": f"{cookie}; _xsrf={xsrf}", "X-XSRFToken": xsrf}
    response = await jp_fetch("llamalab", "settings", method="PATCH", body=body, headers=with_xsrf)
    assert response.code == 200 and json.loads(response.body)["system_prompt"] == "x"


async def test_websocket_checks_the_origin(jp_fetch, jp_ws_fetch, jp_http_port):
    host = {"Host": f"localhost:{jp_http_port}"}
    cookie = _login_cookie(await jp_fetch("llamalab", "settings", headers=dict(host)))
    browser = {"Authorization": "", "Cookie": cookie}
    with pytest.raises(HTTPClientError) as refused:
        await jp_ws_fetch("llamalab", "chat", headers={**browser, "Origin": "http://evil.example"})
    assert refused.value.code == 403
    conn = await jp_ws_fetch("llamalab", "chat", headers={**browser, "Origin": f"http://localhost:{jp_http_port}"})
    assert json.loads(await conn.read_message())["type"] == "hello"
    conn.close()
