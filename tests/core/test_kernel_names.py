"""``llamalab.kernel_names``: a kernel's names described without running the user's code, bounded,
ordered for a prompt; and the expression that ships the module into a kernel."""

from __future__ import annotations

import ast
import builtins
import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from llamalab import kernel_names
from llamalab.kernel_names import describe_namespace, format_names, kernel_expression


class RaisingRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class Trap:
    """Records any call of the hooks a describer must never use on a user's object."""

    touched: list[str] = []

    def __repr__(self) -> str:
        Trap.touched.append("repr")
        threading.Event().wait()  # a repr that never returns
        return ""

    def __str__(self) -> str:
        Trap.touched.append("str")
        return ""

    def __len__(self) -> int:
        Trap.touched.append("len")
        return 0

    def __getattr__(self, name: str) -> object:
        Trap.touched.append(f"getattr {name}")
        raise AttributeError(name)

    def __eq__(self, other: object) -> bool:
        Trap.touched.append("eq")
        return False

    __hash__ = object.__hash__


def total(items, tax=0.2, *, default=Trap(), note: str = "x"):
    return sum(items) * (1 + tax)


def by_name(entries: list[dict]) -> dict[str, dict]:
    return {e["name"]: e for e in entries}


def test_values_functions_classes_and_containers_are_described():
    ns = {"city": "Paris", "n": 3, "ratio": 0.5, "flag": True, "nothing": None, "huge": 10 ** 500,
          "long": "y" * 100, "data": b"abc", "items": [{"a": 1}], "config": {"a": 1, 2: "b", "c": 3},
          "total": total, "RaisingRepr": RaisingRepr, "square": lambda x: x * x}
    entries = by_name(describe_namespace(ns))
    assert entries["city"]["text"] == "city: str = 'Paris'"
    assert entries["n"]["text"] == "n: int = 3" and entries["flag"]["text"] == "flag: bool = True"
    assert entries["nothing"]["text"] == "nothing: NoneType = None"
    assert entries["huge"]["text"] == "huge: int = <a large int>"
    assert entries["long"]["text"] == f"long: str = {'y' * 40!r}… (100 chars)"
    assert entries["data"]["text"] == "data: bytes, 3 bytes"
    assert entries["items"]["text"] == "items: list, 1 item (the first a dict)"
    assert entries["config"]["text"] == "config: dict, 3 keys: 'a', 'c', …"
    assert entries["total"] == {"name": "total", "kind": "function", "type": "function", "order": 10,
                                "text": "def total(items, tax=0.2, *, default=…, note: str = 'x')"}
    assert entries["RaisingRepr"]["text"] == "class RaisingRepr()" and entries["RaisingRepr"]["kind"] == "class"
    assert entries["square"]["text"] == "def square(x)"


def test_underscored_names_modules_and_ipythons_own_are_left_out():
    ns = {"_": 1, "_i3": "x", "__name__": "__main__", "In": [], "Out": {}, "exit": object(), "quit": object(),
          "get_ipython": lambda: None, "open": open, "json": json, "np": np, "kept": 1}
    assert [e["name"] for e in describe_namespace(ns)] == ["kept"]


def test_a_dataframe_shows_its_rows_columns_and_dtypes():
    df = pd.DataFrame({"price": [1.0, 2.5, 3.0], "qty": [1, 2, 3]})
    ns = {"df": df, "s": df["price"], "a": np.zeros((3, 4), dtype=np.float32)}
    entries = by_name(describe_namespace(ns))
    assert entries["df"]["text"] == "df: DataFrame, 3 rows; columns: price (float64), qty (int64)"
    assert entries["df"]["columns"] == ["price", "qty"] and entries["df"]["kind"] == "dataframe"
    assert entries["s"]["text"] == "s: Series 'price', float64, 3 rows"
    assert entries["a"]["text"] == "a: ndarray, shape (3, 4), float32"


def test_a_huge_dataframe_gives_a_bounded_entry():
    wide = pd.DataFrame(np.zeros((2, 10_000)), columns=[f"column_{i}_" + "x" * 60 for i in range(10_000)])
    entry = describe_namespace({"wide": wide})[0]
    assert len(entry["text"]) <= kernel_names.MAX_TEXT
    assert entry["text"].startswith("wide: DataFrame, 2 rows; columns: column_0_") and "(10000 columns)" in entry["text"]
    assert len(entry["columns"]) == kernel_names.MAX_COLUMNS
    assert all(len(c) <= kernel_names.MAX_NAME for c in entry["columns"])
    assert len(json.dumps(entry)) < 3000


def test_user_objects_are_described_by_their_type_only():
    Trap.touched.clear()
    ns = {"bad": RaisingRepr(), "trap": Trap(), "traps": [Trap()], "keyed": {Trap(): 1}, "f": total}
    entries = by_name(describe_namespace(ns))
    assert Trap.touched == []  # no repr (it would never return), str, len, attribute or == was called
    assert entries["bad"]["text"] == "bad: RaisingRepr (tests.core.test_kernel_names)"
    assert entries["trap"] == {"name": "trap", "kind": "object", "type": "Trap", "order": 1,
                               "text": "trap: Trap (tests.core.test_kernel_names)"}
    assert entries["traps"]["text"] == "traps: list, 1 item (the first a Trap)"
    assert entries["keyed"]["text"] == "keyed: dict, 1 key"
    assert format_names(list(entries.values())).count("\n") == 5


def test_one_bad_object_never_spoils_the_rest():
    class Meta(type):
        def __eq__(cls, other: object) -> bool:
            raise RuntimeError("metaclass ==")

        __hash__ = type.__hash__

        @property
        def __signature__(cls) -> object:
            raise RuntimeError("no signature")

    class Odd(metaclass=Meta):
        pass

    entries = by_name(describe_namespace({"Odd": Odd, "odd": Odd(), "after": 1}))
    assert entries["Odd"]["text"] == "class Odd" and entries["odd"]["text"].startswith("odd: Odd")
    assert entries["after"]["text"] == "after: int = 1"


def test_the_most_recent_names_are_kept():
    ns = {f"v{i}": i for i in range(1000)}
    entries = describe_namespace(ns, max_entries=10)
    assert [e["name"] for e in entries] == [f"v{i}" for i in range(990, 1000)]
    assert [e["order"] for e in entries] == list(range(990, 1000))


def test_format_names_puts_the_names_used_near_the_cursor_first():
    ns = {"df": pd.DataFrame({"price": [1.0], "qty": [2]}), "city": "Paris", "total": total, "rate": 0.1}
    entries = describe_namespace(ns)
    assert format_names(entries) == (
        "# Variables in the kernel:\n"
        "# rate: float = 0.1\n"
        "# def total(items, tax=0.2, *, default=…, note: str = 'x')\n"
        "# city: str = 'Paris'\n"
        "# df: DataFrame, 1 row; columns: price (float64), qty (int64)")
    near = "print(city)\nx = total([1]) + df['"
    lines = format_names(entries, near=near).splitlines()
    assert [line.split(":")[0] for line in lines[1:3]] == ["# df", "# def total(items, tax=0.2, *, default=…, note"]
    assert lines[3] == "# city: str = 'Paris'" and lines[4] == "# rate: float = 0.1"
    assert format_names(entries, comment="//").startswith("// Variables in the kernel:\n// rate")


def test_format_names_is_cut_at_whole_lines_and_empty_without_names():
    entries = describe_namespace({f"name_{i}": "v" * 30 for i in range(100)})
    block = format_names(entries, max_chars=300)
    assert len(block) <= 300 and block.endswith("'" + "v" * 30 + "'")
    assert all(line.startswith("# ") for line in block.splitlines())
    assert format_names([]) == "" and format_names(entries, max_chars=30) == ""
    assert format_names([{"name": "x", "text": "x\ninjected"}, "junk", {"text": 3}]) == \
        "# Variables in the kernel:\n# x injected"


def test_the_kernel_expression_runs_the_module_in_a_plain_namespace_and_leaves_it_unchanged():
    namespace = {"__builtins__": builtins, "__name__": "__main__", "city": "Paris", "bad": RaisingRepr(),
                 "df": pd.DataFrame({"price": [1.0], "qty": [2]})}
    before = dict(namespace)
    expression = kernel_expression()
    ast.parse(expression, mode="eval")  # one expression, as user_expressions needs
    result = eval(expression, namespace)
    assert namespace == before  # nothing defined, nothing changed
    entries = json.loads(result)
    assert [e["name"] for e in entries] == ["city", "bad", "df"]
    assert entries[2]["columns"] == ["price", "qty"]


def test_the_module_is_standard_library_only():
    tree = ast.parse(Path(kernel_names.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))
    assert imported <= {"__future__", "json", "re", "types", "typing", "inspect", "sys"}
