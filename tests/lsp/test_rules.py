"""Stop rules and post-processing of code completions (pure functions, no model)."""

from __future__ import annotations

from llamalab.completion_rules import (CursorContext, balance_closers, choose_mode, cut_at_suffix_repeat,
                                           cut_to_block, only_repeats_suffix, postprocess, should_stop,
                                           trim_trailing_whitespace)


def ctx(doc: str, mode=None) -> CursorContext:
    """``doc`` with a ``|`` where the cursor is."""
    offset = doc.index("|")
    return CursorContext.at(doc.replace("|", "", 1), offset, mode)


def test_mode_follows_the_cursor_position():
    assert choose_mode("    ", "") == "multi"
    assert choose_mode("", "") == "multi"
    assert choose_mode("    x = ", "") == "single"
    assert choose_mode("    ", "return x") == "single"
    assert ctx("def f():\n    |\n").mode == "multi"
    assert ctx("def f():\n    x = |\n").mode == "single"


def test_single_line_keeps_the_first_line():
    c = ctx("def f():\n    x = |\n")
    assert postprocess("compute(1)  \n    y = 2\n", c) == "compute(1)"
    assert should_stop("compute(1)\n", c) and not should_stop("compute(1", c)


def test_multi_line_stops_at_the_end_of_the_block():
    c = ctx("def f(a):\n    |\n\nprint(f(1))\n")
    text = "if a:\n        return 1\n    return 2\n\ndef g():\n    pass\n"
    assert postprocess(text, c) == "if a:\n        return 1\n    return 2"
    assert cut_to_block("x\n  y\nz", 2) == "x\n  y"
    assert cut_to_block("x\n\n  y", 2) == "x\n\n  y"  # blank lines do not end a block
    assert should_stop("return 2\ndef g():\n", c)
    assert not should_stop("return 2\n    x", c)


def test_multi_line_stops_where_the_suffix_repeats():
    c = ctx("def f(a):\n    |\n    return total\n")
    assert postprocess("total = a + 1\n    return total\n", c) == "total = a + 1"
    assert cut_at_suffix_repeat("a\nb\nc", "b") == "a"
    assert cut_at_suffix_repeat("a\nb", "") == "a\nb"
    assert should_stop("total = a + 1\n    return total\n", c)


def test_suggestions_that_only_repeat_the_suffix_are_dropped():
    assert only_repeats_suffix("  ", "x")
    assert only_repeats_suffix("return x", "  return x\n")
    assert not only_repeats_suffix("return y", "return x")
    assert postprocess("y)", ctx("print(|y)\n")) == ""


def test_trailing_whitespace_is_trimmed():
    assert trim_trailing_whitespace("a  \n b\t\n\n") == "a\n b"


def test_closing_brackets_already_after_the_cursor_are_not_doubled():
    assert balance_closers("'hi')", ")") == "'hi'"
    assert balance_closers("x))", ")") == "x)"
    assert balance_closers("f(x)", ")") == "f(x)"  # closes its own bracket
    assert balance_closers("1, 2])", "])") == "1, 2"
    assert balance_closers("1, 2]", ")") == "1, 2]"  # not the same bracket: left alone
    assert postprocess("'hello')", ctx("print(|)\n")) == "'hello'"


def test_end_of_a_line_that_opens_a_block_asks_for_its_body():
    assert choose_mode("def area(r):", "") == "multi"
    assert choose_mode("if (x) {", "  ") == "multi"
    assert choose_mode("def area(r):", "  # comment") == "single"
    assert choose_mode("x = y", "") == "single"
    c = ctx("import math\n\ndef area(r):|\n\nprint(area(2))\n")
    assert c.mode == "multi" and c.block_indent == 1
    body = "\n    return math.pi * r ** 2\n\ndef other():\n    pass\n"
    assert postprocess(body, c) == "\n    return math.pi * r ** 2"
    assert should_stop("\n    return math.pi * r ** 2\n\ndef other():\n", c)
    assert not should_stop("\n    return math.pi", c)


def test_a_bracket_opened_at_the_end_of_the_line_keeps_its_closing_line():
    c = ctx("    items = [|\n    print(items)\n")
    assert c.mode == "multi" and c.block_indent == 5
    completion = "\n        1,\n        2,\n    ]\n    total = sum(items)\n"
    assert postprocess(completion, c) == "\n        1,\n        2,\n    ]"
    js = ctx("function f(a) {|\n")
    assert postprocess("\n  return a + 1;\n}\nf(2);\n", js) == "\n  return a + 1;\n}"
