"""The suggestion service's prompt plans, token by token, on the real demo model (GPT-2 BPE)
and the tiny Code Llama GGUF (SentencePiece, FIM tokens): notebook layout, cache stability
while typing and between cells, plain prefix/suffix requests, kernel names, budgets, type-ahead,
and bad input (10,000 cells, a 5 MB cell)."""

from __future__ import annotations

import asyncio
from typing import Optional

import pytest

from llamalab import Engine, ModelDescription, TokenStream
from llamalab.suggest import Cell, SuggestionService, SuggestionText, SuggestOptions, SuggestRequest, collect
from llamalab.suggest.notebook import render_notebook


def notebook(cells: int) -> list[Cell]:
    """A notebook of ordinary Python cells, about 280 characters each."""
    out = [Cell("c0", "import math\nimport statistics\n\nvalues = [3.5, 1.25, 9.0, 4.75]\n")]
    for i in range(1, cells):
        out.append(Cell(f"c{i}", f"def step_{i}(data, scale={i}):\n    \"\"\"Scale and sum the data ({i}).\"\"\"\n"
                                 f"    total = 0.0\n    for item in data:\n        total += item * scale\n"
                                 f"    return round(total / {i + 1}, 3)\n\nresult_{i} = step_{i}(values)\n"))
    return out


def shared(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def request(cells: list[Cell], index: int, prefix: str, suffix: str = "", **kw) -> SuggestRequest:
    return SuggestRequest(document=("alice", "analysis.ipynb"), prefix=prefix, suffix=suffix, language="python",
                          cells=cells, cell_index=index, **kw)


# -- layout without a model -------------------------------------------------------------------
def test_a_notebook_reads_as_a_percent_script():
    cells = [Cell("a", "import pandas as pd\n"), Cell("m", "# Load\nThe *data*.", kind="markdown"),
             Cell("r", "raw text", kind="raw"), Cell("b", "df = pd.read_csv('x.csv')"), Cell("cur", ""),
             Cell("after", "print(df)")]
    text = render_notebook(cells, 4, "df.he", "", "python", max_prefix_chars=10_000, max_suffix_chars=1000)
    assert text.prefix == ("# %%\nimport pandas as pd\n\n# %% [markdown]\n# # Load\n# The *data*.\n\n"
                           "# %%\ndf = pd.read_csv('x.csv')\n\n# %%\ndf.he")
    assert text.suffix == "\n\n# %%\nprint(df)"
    assert text.cell_ids == ("a", "m", "b", "cur")
    assert text.is_anchor(0) and text.is_anchor(3) and not text.is_anchor(1)
    assert text.anchor_key(text.cell_lines[2] + 1) == ("b", 1)
    assert text.from_first_cell


def test_a_language_without_line_comments_gets_blank_lines_and_no_markdown():
    cells = [Cell("a", "x <- 1"), Cell("m", "notes", kind="markdown"), Cell("cur", "")]
    text = render_notebook(cells, 2, "y <- ", "", "brainfuck", max_prefix_chars=1000, max_suffix_chars=100)
    assert text.prefix == "x <- 1\n\ny <- "


def test_ten_thousand_cells_and_a_five_megabyte_cell_stay_bounded():
    cells = notebook(10_000)
    text = render_notebook(cells, 9_999, "resu", "", "python", max_prefix_chars=12_000, max_suffix_chars=2_000)
    assert len(text.prefix) <= 12_000 and not text.from_first_cell and text.cell_ids[-1] == "c9999"
    headed = render_notebook(cells, 9_999, "resu", "", "python", max_prefix_chars=12_000, max_suffix_chars=2_000,
                             max_head_chars=4_000)
    assert headed.from_first_cell and headed.cell_ids[0] == "c0" and len(headed.prefix) <= 16_000
    assert headed.prefix.endswith(text.prefix)
    huge = "x = 1\n" * 900_000  # 5.4 MB in the cursor's own cell
    big = render_notebook(cells[:3] + [Cell("big", "")], 3, huge, huge, "python", max_prefix_chars=12_000,
                          max_suffix_chars=2_000)
    assert big.cell_ids == ("big",) and len(big.suffix) == 2_000  # the caller's token windows cut the prefix


# -- plans on the demo model ------------------------------------------------------------------
def test_typing_in_a_forty_cell_notebook_only_appends_to_the_prompt(engine):
    service = SuggestionService()
    cells = notebook(40) + [Cell("new", "")]
    typed = "def summarize(data):\n    best = max(data)\n    return best / len(data)\n\nsummary = summ"
    plans = []
    for end in [*range(30, len(typed), 7), len(typed)]:
        plans.append(service.plan(engine, request(cells, 40, typed[:end])).tokens)
    assert len(plans[0]) > 900  # the window is full: the notebook is far longer than 1,024 tokens
    for before, after in zip(plans, plans[1:]):
        kept = shared(before, after)
        assert len(after) - kept <= max(12, len(after) // 10), (len(after), kept)
    text = engine.detokenize(plans[-1])
    assert text.rstrip().endswith("summary =") and "# %%\ndef step_39(" in text


def test_entering_the_next_cell_keeps_the_start_of_the_prompt(engine):
    service = SuggestionService()
    cells = notebook(40)
    first = service.plan(engine, request(cells + [Cell("a", "")], 40, "x = step_3")).tokens
    done = cells + [Cell("a", "x = step_3(values)\n"), Cell("b", "")]
    second = service.plan(engine, request(done, 41, "y = ")).tokens
    # the window keeps its start cell: all but the newest cell's text is shared
    assert shared(first, second) >= len(first) - 12


def test_a_warm_up_after_a_request_in_another_cell_is_what_the_first_keystroke_reuses(engine):
    """The window start remembered from another cell must not leave the warm-up without the head."""
    service = SuggestionService(SuggestOptions(prefix_tokens=512, context_tokens=384))
    cells = notebook(40) + [Cell("new", "")]
    service.plan(engine, request(cells, 0, "import ma"))
    warm = service.plan(engine, request(cells, 40, "", warm=True)).tokens
    typed = service.plan(engine, request(cells, 40, "d")).tokens
    assert shared(warm, typed) == len(warm) and len(typed) - len(warm) <= 2


def test_the_window_start_survives_cells_between_head_and_cursor_that_are_no_longer_sent(engine):
    service = SuggestionService()
    cells = notebook(40) + [Cell("new", "")]
    first = service.plan(engine, request(cells, 40, "z = 1\nw = ")).tokens
    fewer = service.plan(engine, request(cells[:8] + cells[20:], 28, "z = 1\nw = 2")).tokens
    assert shared(first, fewer) >= len(first) - 8


def test_the_notebook_head_and_kernel_names_lead_the_prompt(engine):
    service = SuggestionService()
    cells = notebook(40) + [Cell("new", "")]
    names = "# Variables in the kernel:\n# df: DataFrame, 3 rows; columns: price (float64), qty (int64)\n"
    plan = service.plan(engine, request(cells, 40, "df[\"", kernel_names=names))
    text = engine.detokenize(plan.tokens)
    assert text.startswith(names)
    assert text.index("import statistics") < text.index("def step_39(")  # the head, then the window
    assert "def step_12(" not in text  # cells between the head and the window are left out


def test_a_plain_request_with_the_whole_text_gets_the_same_stable_windows(engine):
    service = SuggestionService()
    body = "".join(c.source + "\n" for c in notebook(40))
    plans = []
    for typed in ("answer = st", "answer = step", "answer = step_1", "answer = step_12("):
        plans.append(service.plan(engine, SuggestRequest(document=("bob", "script.py"), prefix=body + typed,
                                                         language="python")).tokens)
    for before, after in zip(plans, plans[1:]):
        assert len(after) - shared(before, after) <= 8


def test_budgets_shrink_to_the_engine_context(engine):
    service = SuggestionService(SuggestOptions(prefix_tokens=4096, suffix_tokens=1024, context_tokens=512))
    cells = notebook(200) + [Cell("new", "")]
    plan = service.plan(engine, request(cells, 200, "q = "))
    assert len(plan.tokens) + 64 <= engine.context_size


def test_fim_layout_of_a_notebook_on_the_tiny_code_llama(code_llama):  # noqa: F811
    eng, _ = code_llama
    fim = eng.fim_tokens()
    service = SuggestionService(SuggestOptions(prefix_tokens=120, suffix_tokens=40, context_tokens=0))
    cells = [Cell("a", "import os"), Cell("cur", ""), Cell("after", "print(name)")]
    plan = service.plan(eng, SuggestRequest(document="nb", prefix="name = os.", suffix="\n", language="python",
                                            cells=cells, cell_index=1))
    tokens = plan.tokens
    assert plan.infill and tokens[0] == fim.bos and tokens[1] == fim.pre and tokens[-1] == fim.mid
    suffix_ids = tokens[tokens.index(fim.suf) + 1:-1]
    assert "print(name)" in eng.detokenize(suffix_ids)
    assert "import os" in eng.detokenize(tokens[2:tokens.index(fim.suf)])
    assert plan.healed == "" or "name = os.".endswith(plan.healed)


# -- engines that take text only ----------------------------------------------------------------
class TextOnlyEngine(Engine):
    """An engine without token prompts (as a remote server is): it records the prompts."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def complete(self, prompt, params=None) -> TokenStream:
        self.prompts.append(prompt)

        def pieces():
            yield "value)\n"
            from llamalab import GenerationResult
            return GenerationResult(text="value)\n", finish_reason="stop", prompt_tokens=1, completion_tokens=1)

        return TokenStream(pieces(), lambda: None)

    def chat(self, messages, params=None):
        raise NotImplementedError

    def tokenize(self, text, *, add_bos=False, special=False):
        raise AssertionError("a text-only engine is never asked to tokenize a suggestion's prompt")

    def describe(self) -> ModelDescription:
        return ModelDescription(name="remote", backend="remote", location="http://x", context_length=4096)

    def cancel(self) -> None:
        pass


def test_a_text_only_engine_gets_the_same_layout_as_text():
    eng = TextOnlyEngine()
    service = SuggestionService()
    cells = notebook(40) + [Cell("new", "")]
    stream, plan = service.start(eng, request(cells, 40, "out = step_2("))
    assert plan.tokens is None and eng.prompts[0] == plan.text
    assert plan.text.endswith("# %%\nout = step_2(") and plan.text.startswith("# %%\nimport math")
    text = SuggestionText(request(cells, 40, "out = step_2(").cursor, plan.healed)
    suggestion, ended_by = asyncio.run(collect(_aiter(stream), text, 5.0))
    assert suggestion == "value)" and ended_by in ("stop rules", "model")


async def _aiter(stream: TokenStream):
    for piece in stream:
        yield piece


# -- type-ahead ---------------------------------------------------------------------------------
def test_typing_what_the_suggestion_said_is_answered_from_it():
    service = SuggestionService()
    cells = [Cell("a", "x = 1"), Cell("cur", "")]
    asked = request(cells, 1, "total = comp")
    assert service.predicted(asked) is None
    service.remember(asked, "ute_total(x)")
    assert service.predicted(request(cells, 1, "total = compute_")) == "total(x)"
    assert service.predicted(request(cells, 1, "total = compX")) is None  # typed something else
    assert service.predicted(request(cells, 1, "total = compute_total(x)")) is None  # all of it typed
    other_cell = [Cell("a", "x = 1"), Cell("other", "")]
    assert service.predicted(request(other_cell, 1, "total = compute_")) is None
    service.forget(asked.document)
    assert service.predicted(request(cells, 1, "total = compute_")) is None


def test_state_is_kept_for_a_bounded_number_of_documents():
    from llamalab.suggest.service import MAX_DOCUMENTS

    service = SuggestionService()
    for i in range(MAX_DOCUMENTS + 50):
        service.remember(SuggestRequest(document=f"doc{i}", prefix="a = "), "1")
    assert len(service._documents) == MAX_DOCUMENTS
    assert service.predicted(SuggestRequest(document="doc0", prefix="a = ")) is None


@pytest.fixture(scope="module")
def code_llama(tmp_path_factory) -> Optional[tuple]:
    pytest.importorskip("torch")
    pytest.importorskip("sentencepiece")
    from tests.core.test_fim import code_llama as make

    yield from make.__wrapped__(tmp_path_factory)


class CountingTokenizer:
    """The demo engine, recording the longest text it was asked to tokenize."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.longest = 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def tokenize(self, text, **kw):
        self.longest = max(self.longest, len(text))
        return self.engine.tokenize(text, **kw)


def test_a_two_million_character_line_costs_no_more_than_a_short_one(engine):
    """The cursor at the end (and in the middle) of a 1.9-million-character line: only a window
    around the cursor is ever tokenized."""
    counting = CountingTokenizer(engine)
    service = SuggestionService()
    line = "x = [" + ", ".join(str(i % 97) for i in range(640_000))  # ~1.9 million characters
    for cut in (len(line), len(line) // 2):
        plan = service.plan(counting, SuggestRequest(document="long.py", prefix="import os\n" + line[:cut],
                                                     suffix=line[cut:] + "\n]\n", language="python"))
        assert len(plan.tokens) <= service.options.prefix_tokens + 16
    assert counting.longest <= 2 * service.options.prefix_tokens * 8
