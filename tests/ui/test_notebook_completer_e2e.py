"""Inline completions in a real notebook, driven as a person types: a 40-cell notebook (ordinary
Python, ~11 kB) sends its structure (the cells with their ids, the cursor's cell index, the
cursor cell's own text as prefix) rather than a 6,000-character tail, and entering a cell sends
one warm-up request; after ghost text shows, typing the characters it predicted keeps showing
the rest with no new request (the front end's suggestion cache), and Tab asks for the next
suggestion at once.

The front end logs what its suggestion cache did at debug level (``llamalab inline: ...``); the
tests wait for those lines and for requests rather than for fixed times.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest

from tests.ui.conftest import Lab

HEADER = "def add(a, b):"  # Enter, then BODY: CodeMirror indents the body line itself
BODY = "return a"
TYPED = f"{HEADER}\n    {BODY}"

GHOST_JS = (
    "() => [...document.querySelectorAll('.jp-GhostText[data-provided-by=\"llamalab\"]')]"
    ".map(e => e.textContent).join('')"
)
GHOST_SHOWN_JS = f"() => ({GHOST_JS})().trim().length > 0"


def forty_cells() -> list[str]:
    """Forty cells of the Python a data notebook holds, ~11 kB in all."""
    cells = [
        "import csv\nimport json\nimport math\nimport statistics\nfrom collections import Counter, defaultdict\n"
        "from dataclasses import dataclass, field\nfrom pathlib import Path\n\nDATA = Path('data')\nOUT = Path('out')",
    ]
    for i in range(1, 40):
        kind = i % 4
        if kind == 1:
            cells.append(
                f"@dataclass\nclass Record{i}:\n    name: str\n    price: float\n    qty: int = 0\n"
                f"    tags: list[str] = field(default_factory=list)\n\n    def total(self) -> float:\n"
                f"        return round(self.price * self.qty, 2)\n\n    def label(self) -> str:\n"
                f"        return f'{{self.name}} x{{self.qty}}'"
            )
        elif kind == 2:
            cells.append(
                f"def load_{i}(path: Path) -> list[dict]:\n    \"\"\"Rows of the CSV file at path, numbers parsed.\"\"\"\n"
                f"    with path.open(newline='') as handle:\n        rows = list(csv.DictReader(handle))\n"
                f"    for row in rows:\n        row['price'] = float(row.get('price') or 0)\n"
                f"        row['qty'] = int(row.get('qty') or 0)\n    return rows"
            )
        elif kind == 3:
            cells.append(
                f"def summary_{i}(values: list[float]) -> dict:\n    if not values:\n        return {{}}\n"
                f"    return {{\n        'count': len(values),\n        'mean': statistics.fmean(values),\n"
                f"        'stdev': statistics.pstdev(values),\n        'max': max(values),\n    }}"
            )
        else:
            cells.append(
                f"counts_{i} = Counter()\nby_tag_{i} = defaultdict(list)\nfor n in range({i * 10}):\n"
                f"    key = 'even' if n % 2 == 0 else 'odd'\n    counts_{i}[key] += 1\n"
                f"    by_tag_{i}[key].append(math.sqrt(n))\nprint(json.dumps(counts_{i}, sort_keys=True))"
            )
    return cells


CELLS = forty_cells()


@pytest.fixture(scope="module")
def lab_options() -> dict[str, Any]:
    """A generous time budget per suggestion: these tests are about what the front end sends and
    shows, not the model's speed (bench/bench_notebook.py measures that). With the default 3 s, a
    suggestion whose prompt is not yet cached (on a two-core CI machine the 40 cells take several
    seconds to read) is answered empty, and the ghost text would not show."""
    return {"llamalab": {"completion_time_budget_ms": 60_000}}


class CompleteRequests:
    """The bodies the page POSTed to /llamalab/complete, in order, and their replies' texts."""

    def __init__(self, lab: Lab) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.replies: list[str] = []
        self.log: list[dict[str, Any]] = []
        self.failed: list[str] = []
        lab.page.on("request", self._on_request)
        lab.page.on("response", self._on_response)
        lab.page.on("requestfailed", self._on_failed)

    def _on_failed(self, request: Any) -> None:
        if self.is_complete(request):
            body = self.body(request)
            self.failed.append(f"warm={bool(body.get('warm'))} cell_index={body.get('cell_index')}: {request.failure}")

    @staticmethod
    def is_complete(request: Any) -> bool:
        return "/llamalab/complete" in request.url and request.method == "POST"

    @staticmethod
    def body(request: Any) -> dict[str, Any]:
        try:
            return json.loads(request.post_data or "{}")
        except ValueError:
            return {}

    def _on_request(self, request: Any) -> None:
        if self.is_complete(request):
            self.bodies.append(self.body(request))

    def _on_response(self, response: Any) -> None:
        if self.is_complete(response.request) and response.ok:
            try:
                reply = json.loads(response.text())
            except Exception:  # an aborted (superseded) request has no body to read
                return
            self.replies.append(reply.get("text", ""))
            self.log.append({"warm": bool(self.body(response.request).get("warm")),
                             "prefix": self.body(response.request).get("prefix", "")[-30:],
                             "text": reply.get("text"), "usage": reply.get("usage")})

    def summary(self) -> str:
        """The requests sent and the replies read, in one line each (for failure messages)."""
        sent = [f"sent warm={bool(b.get('warm'))} cell_index={b.get('cell_index')} prefix=...{b.get('prefix', '')[-30:]!r}"
                for b in self.bodies]
        failed = [f"failed {line}" for line in self.failed]
        return "\n".join([*sent, *(f"answered {json.dumps(r)}" for r in self.log), *failed])

    def suggestions(self) -> list[dict[str, Any]]:
        """The requests for suggestions (not warm-ups)."""
        return [b for b in self.bodies if not b.get("warm")]


def matching(predicate: Callable[[dict[str, Any]], bool]) -> Callable[[Any], bool]:
    """A request predicate for page.expect_request: a POST to /llamalab/complete whose body matches."""
    return lambda r: CompleteRequests.is_complete(r) and predicate(CompleteRequests.body(r))


def wait_for_ghost_text(lab: Lab, requests: CompleteRequests, timeout: float = 60.0) -> None:
    """Until llamalab's ghost text shows; fails with what was sent and answered."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        lab.page.wait_for_function(GHOST_SHOWN_JS, timeout=timeout * 1000)
    except PlaywrightTimeout:
        raise AssertionError(f"no ghost text in {timeout:.0f} s:\n{requests.summary()}") from None


def open_forty_cell_notebook(lab: Lab, name: str, requests: CompleteRequests) -> None:
    """Opens the 40-cell notebook with an empty cell at the end, enters that cell, waits until its
    warm-up request is answered (the model has read the notebook; on a slow CPU that takes
    seconds, and a suggestion asked for meanwhile could run out of its time budget), and types
    TYPED there."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page = lab.page
    lab.new_notebook(name, cells=[*CELLS, ""])
    # the notebook renders cells' editors lazily: scroll the last cell into view, then click it
    last_cell = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").nth(len(CELLS))
    last_cell.scroll_into_view_if_needed()
    last = last_cell.locator(".cm-content")
    warm_for_last = matching(lambda b: b.get("warm") is True and b.get("cell_index") == len(CELLS))
    try:
        with page.expect_response(lambda r: warm_for_last(r.request), timeout=120_000) as warmed:
            last.click()
    except PlaywrightTimeout:
        raise AssertionError(f"no answer to the warm-up of the last cell:\n{requests.summary()}") from None
    assert warmed.value.ok, warmed.value.status
    page.keyboard.type(HEADER, delay=20)
    page.keyboard.press("Enter")  # JupyterLab asks for no completion at a new line: type on
    page.keyboard.type(BODY, delay=40)
    assert lab.cell_texts()[-1] == TYPED, lab.cell_texts()[-1]


def test_ghost_text_in_a_40_cell_notebook_sends_the_notebook_structure(lab: Lab) -> None:
    page = lab.page
    requests = CompleteRequests(lab)
    open_forty_cell_notebook(lab, "forty.ipynb", requests)
    assert 10_000 <= sum(map(len, CELLS)) <= 12_000

    warm = next(b for b in requests.bodies if b.get("warm") and b.get("cell_index") == len(CELLS))
    assert warm["cells"][-1] == {"id": f"cell-{len(CELLS)}", "source": "", "kind": "code"}, warm["cells"][-1]
    assert warm["path"] == "forty.ipynb"

    wait_for_ghost_text(lab, requests)
    ghost = page.evaluate(GHOST_JS)
    lab.shot("ghost-text-40-cells")

    asked = requests.suggestions()
    assert asked, f"no suggestion request was sent: {requests.bodies}"
    body = asked[-1]
    assert body.get("cell_index") == len(CELLS), {k: body.get(k) for k in ("cell_index", "path")}
    cells = body.get("cells") or []
    assert [c["id"] for c in cells] == [f"cell-{i}" for i in range(len(CELLS) + 1)]
    assert [c["source"] for c in cells[:-1]] == CELLS  # whole cells, as they are
    assert {c["kind"] for c in cells} == {"code"}
    assert cells[-1]["source"] == ""  # the cursor's cell travels as prefix + suffix
    assert body["prefix"] == TYPED, body["prefix"][-200:]  # not a 6,000-character tail
    assert body["suffix"] == ""
    assert body["path"] == "forty.ipynb"
    assert body.get("language") == "python"
    kernel = page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.id")
    assert body.get("kernel", {}).get("id") == kernel, body.get("kernel")
    assert isinstance(body["kernel"].get("execution_count"), int)
    assert any(ghost.strip() in reply for reply in requests.replies), (
        f"the ghost text {ghost!r} is none of llamalab's suggestions {requests.replies}")


def test_typing_the_predicted_characters_keeps_the_suggestion_without_a_request(lab: Lab) -> None:
    page = lab.page
    requests = CompleteRequests(lab)
    open_forty_cell_notebook(lab, "typeahead.ipynb", requests)
    wait_for_ghost_text(lab, requests)
    ghost = page.evaluate(GHOST_JS)
    typed, rest = ghost[:1], ghost[1:]
    assert rest.strip(), f"the suggestion {ghost!r} leaves nothing to type ahead"
    before = lab.cell_texts()[-1]
    sent = len(requests.bodies)
    lab.shot("before-typing-ahead")

    with page.expect_console_message(lambda m: "llamalab inline: type-ahead suggestion" in m.text, timeout=30_000):
        if typed in "\n\t":  # Enter would indent, Tab would accept: insert it as text
            page.keyboard.insert_text(typed)
        else:
            page.keyboard.type(typed)
    page.wait_for_function(f"(rest) => ({GHOST_JS})() === rest", arg=rest, timeout=10_000)
    lab.shot("typed-ahead")
    assert lab.cell_texts()[-1] == before + typed
    assert len(requests.bodies) == sent, (
        f"typing the predicted {typed!r} sent requests: {requests.bodies[sent:]}")

    # Tab takes the rest; where JupyterLab asks again on its own (the end of a line that is not
    # blank), the next suggestion is asked for at once, and JupyterLab's request shares it
    accepted = before + typed + rest
    if not accepted.rsplit("\n", 1)[-1].strip():
        page.keyboard.press("Tab")
        page.wait_for_function(f"() => !({GHOST_SHOWN_JS})()", timeout=10_000)
        assert lab.cell_texts()[-1] == accepted
        return
    with page.expect_console_message(lambda m: "llamalab inline:" in m.text and "suggestion" in m.text
                                     and "typeahead.ipynb" in m.text, timeout=60_000):
        with page.expect_request(matching(lambda b: not b.get("warm") and b.get("prefix") == accepted),
                                 timeout=30_000):
            with page.expect_console_message(lambda m: "llamalab inline: prefetch" in m.text, timeout=30_000):
                page.keyboard.press("Tab")
    assert lab.cell_texts()[-1] == accepted
    ahead = [b for b in requests.suggestions() if b.get("prefix") == accepted]
    assert len(ahead) == 1, f"the suggestion after Tab was asked for {len(ahead)} times:\n{requests.summary()}"

