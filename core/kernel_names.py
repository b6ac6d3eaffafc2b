"""The names a notebook's kernel defines, described for a prompt: variables with their types,
functions with their signatures, DataFrame columns with their dtypes, array shapes.

Two halves, in one self-contained module that imports only the standard library, because its
own source text is shipped into kernels that may not have llamalab installed:

``describe_namespace(namespace)``
    runs inside the kernel: one small JSON-able entry per user name, read without calling any
    code of the user's types (no ``repr``, ``str``, ``len`` or attribute hooks on their objects),
    each entry bounded, every name in its own ``try`` so one bad object never spoils the rest.
``format_names(entries, near=...)``
    runs in the server or the magics: a compact comment block for a prompt, the names used in
    ``near`` (the text around the cursor, the user's message) first, cut at whole lines.

``kernel_expression()`` is the bridge: one Python *expression* for a Jupyter
``execute_request``'s ``user_expressions`` that runs this module's source in a fresh dict inside
the kernel and evaluates to the JSON of ``describe_namespace(globals())``. It defines nothing in
the user's namespace, and with ``silent=True, store_history=False`` the read leaves the
notebook's history and execution count alone.

An entry is a dict: ``name``, ``kind`` (``value``, ``function``, ``class``, ``dataframe``,
``series``, ``array``, ``object``), ``type`` (the type's name), ``text`` (the line shown, at most
``MAX_TEXT`` characters), ``order`` (the name's position in the namespace: higher is more
recently defined) and, for a DataFrame, ``columns`` (the first ``MAX_COLUMNS`` names).
"""

from __future__ import annotations

import json
import re
import types
from typing import Any, Mapping

__all__ = ["describe_namespace", "format_names", "kernel_expression"]

MAX_TEXT = 300          # characters of one entry's line
MAX_COLUMNS = 50        # DataFrame columns described
MAX_NAME = 40           # characters of a column name or a dict key shown
MAX_VALUE = 40          # characters of a str value shown
MAX_JSON = 200_000      # characters of the JSON a kernel sends back (oldest names dropped first)
HEADER = "Variables in the kernel:"

# IPython's own names in a kernel's namespace (underscored ones are skipped anyway).
_IPYTHON_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython", "open"})
_SCALARS = (int, float, bool, complex, type(None))
_CONTAINERS = (list, tuple, set, frozenset, dict)
_FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.BuiltinMethodType)


# -- inside the kernel ---------------------------------------------------------------------------
def describe_namespace(namespace: Mapping[str, object], *, max_entries: int = 200) -> list[dict]:
    """One entry per user name of ``namespace``, the most recently defined ``max_entries``
    (in the namespace's order). Skips underscored names, modules and IPython's own names."""
    try:
        items = list(namespace.items())
    except Exception:
        return []
    entries: list[dict] = []
    for order in range(len(items) - 1, -1, -1):
        if len(entries) >= max_entries:
            break
        try:
            name, obj = items[order]
            if type(name) is not str or name.startswith("_") or name in _IPYTHON_NAMES:
                continue
            if issubclass(type(obj), types.ModuleType):
                continue
            entry = _describe(name, obj)
        except Exception:
            continue
        if entry is not None:
            entry["order"] = order
            entries.append(entry)
    entries.reverse()
    return entries


def _describe(name: str, obj: object) -> dict | None:
    cls = type(obj)
    if _one_of(cls, _SCALARS) or cls is str or cls is bytes:
        return _entry(name, "value", cls.__name__, f"{name}: {cls.__name__}{_value(obj)}")
    if _one_of(cls, _CONTAINERS):
        return _entry(name, "value", cls.__name__, _container(name, obj))
    if _one_of(cls, _FUNCTIONS):
        return _entry(name, "function", cls.__name__, _function(name, obj))
    if issubclass(cls, type):
        signature = _signature(obj)
        return _entry(name, "class", "type", f"class {name}{signature}")
    module, qualname = _type_name(cls)
    pandas = module == "pandas" or module.startswith("pandas.")
    if pandas and qualname == "DataFrame":
        return _dataframe(name, obj)
    if pandas and qualname == "Series":
        return _series(name, obj)
    if module == "numpy" and qualname == "ndarray":
        shape = tuple(int(n) for n in obj.shape)  # type: ignore[attr-defined]
        return _entry(name, "array", "ndarray", f"{name}: ndarray, shape {shape}, {_text(obj.dtype)}")  # type: ignore[attr-defined]
    where = "" if module in ("builtins", "__main__") else f" ({module})"
    return _entry(name, "object", qualname, f"{name}: {qualname}{where}")


def _one_of(cls: type, options: tuple[type, ...]) -> bool:
    """``cls`` is exactly one of ``options``, compared by identity (``in`` would call a
    metaclass's ``__eq__``, user code)."""
    return any(cls is option for option in options)


def _entry(name: str, kind: str, type_name: str, text: str) -> dict:
    return {"name": name, "kind": kind, "type": type_name[:MAX_NAME], "text": _clip(text, MAX_TEXT)}


def _type_name(cls: type) -> tuple[str, str]:
    """The type's module and qualified name, read from the type itself (never the object)."""
    module = type.__dict__["__module__"].__get__(cls)
    qualname = type.__dict__["__qualname__"].__get__(cls)
    qualname = qualname.rsplit(".<locals>.", 1)[-1] if type(qualname) is str else "?"
    return (module if type(module) is str else "?"), qualname


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _clip(text: str, limit: int) -> str:
    text = text.replace("\r", " ").replace("\n", " ")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _text(value: object) -> str:
    """A short text for a library value we trust (a dtype, a column name)."""
    if type(value) is str:
        return _clip(value, MAX_NAME)
    if _one_of(type(value), _SCALARS):
        return _short(value)
    if type(value) is tuple:
        return _clip("/".join(_text(v) for v in value), MAX_NAME)
    module, _ = _type_name(type(value))
    if module.startswith(("numpy", "pandas")):
        return _clip(str(value), MAX_NAME)
    return "?"


def _short(value: object) -> str:
    """``repr`` of an exact builtin scalar or str, bounded; ``…`` for anything else."""
    cls = type(value)
    if cls is str:
        return repr(value) if len(value) <= MAX_VALUE else repr(value[:MAX_VALUE]) + "…"
    if cls is int and value.bit_length() > 128:
        return "<a large int>"
    if _one_of(cls, _SCALARS):
        return _clip(repr(value), MAX_VALUE)
    return "…"


def _value(obj: object) -> str:
    if type(obj) is bytes:
        return f", {len(obj)} bytes"
    shown = _short(obj)
    if type(obj) is str and len(obj) > MAX_VALUE:
        return f" = {shown} ({len(obj)} chars)"
    return f" = {shown}"


def _container(name: str, obj: Any) -> str:
    cls = type(obj)
    text = f"{name}: {cls.__name__}, {_count(len(obj), 'key' if cls is dict else 'item')}"
    if cls is dict:
        keys = []
        for key in obj:
            if type(key) is str:
                keys.append(repr(key[:MAX_NAME]))
            if len(keys) >= 5:
                break
        if keys:
            text += ": " + ", ".join(keys) + (", …" if len(obj) > len(keys) else "")
    elif (cls is list or cls is tuple) and obj:
        text += f" (the first a {type(obj[0]).__name__})"
    return text


def _function(name: str, obj: Any) -> str:
    prefix = "def"
    code = getattr(obj, "__code__", None) if type(obj) is types.FunctionType else None
    if code is not None and code.co_flags & 0x80:  # CO_COROUTINE
        prefix = "async def"
    return f"{prefix} {name}{_signature(obj) or '(...)'}"


class _Shown:
    """Stands in for a default value or an annotation, so a signature's text calls no user code."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _signature(obj: Any) -> str:
    """``(a, b=1, *, c: int)`` built without calling ``repr`` on defaults or annotations of user types."""
    import inspect

    try:
        signature = inspect.signature(obj)
        empty = inspect.Parameter.empty
        params = []
        for p in signature.parameters.values():
            default = empty if p.default is empty else _Shown(_short(p.default))
            annotation = empty if p.annotation is empty else _Shown(_annotation(p.annotation))
            params.append(p.replace(default=default, annotation=annotation))
        return str(signature.replace(parameters=params, return_annotation=empty))
    except Exception:
        return ""


def _annotation(annotation: object) -> str:
    if type(annotation) is str:
        return _clip(annotation, MAX_NAME)
    if issubclass(type(annotation), type):
        return _type_name(annotation)[1]  # type: ignore[arg-type]
    return "…"


def _dataframe(name: str, df: Any) -> dict:
    rows, width = (int(n) for n in df.shape)
    names = list(df.columns[:MAX_COLUMNS])
    dtypes = list(df.dtypes.iloc[:MAX_COLUMNS])
    shown = [_text(c) for c in names]
    text = f"{name}: DataFrame, {_count(rows, 'row')}; columns: "
    parts = [f"{c} ({_text(d)})" for c, d in zip(shown, dtypes)]
    more = f", … ({width} columns)" if width > len(parts) else ""
    body = ", ".join(parts)
    if len(text) + len(body) + len(more) > MAX_TEXT:
        body = body[:MAX_TEXT - len(text) - len(f", … ({width} columns)")].rsplit(", ", 1)[0]
        more = f", … ({width} columns)"
    entry = _entry(name, "dataframe", "DataFrame", text + body + more)
    entry["columns"] = shown
    return entry


def _series(name: str, series: Any) -> dict:
    label = series.name
    titled = f" {_text(label)!r}" if label is not None else ""
    return _entry(name, "series", "Series", f"{name}: Series{titled}, {_text(series.dtype)}, {_count(int(len(series.index)), 'row')}")


def _run(namespace: Mapping[str, object], max_chars: int = MAX_JSON) -> str:
    """The JSON the kernel sends back: entries, the oldest dropped until it fits ``max_chars``."""
    try:
        entries = describe_namespace(namespace)
        text = json.dumps(entries)
        while len(text) > max_chars and entries:
            entries = entries[len(entries) // 4 + 1:]
            text = json.dumps(entries)
        return text
    except Exception:
        return "[]"


# -- in the server or the magics -----------------------------------------------------------------
_IDENTIFIER = re.compile(r"[^\W\d]\w*")


def format_names(entries: list[dict], *, near: str = "", max_chars: int = 1200, comment: str = "#") -> str:
    """A comment block of the entries, most relevant first: the names used in ``near`` (the later
    their last use, the sooner), then the rest, most recently defined first; cut to ``max_chars``
    at whole lines. "" when no entry fits."""
    last_use: dict[str, int] = {}
    for match in _IDENTIFIER.finditer(near or ""):
        last_use[match.group()] = match.start()
    usable = [e for e in entries if isinstance(e, dict) and isinstance(e.get("text"), str)
              and isinstance(e.get("name"), str) and e["text"].strip()]
    used = sorted((e for e in usable if e["name"] in last_use), key=lambda e: -last_use[e["name"]])
    rest = sorted((e for e in usable if e["name"] not in last_use), key=lambda e: -_order(e))
    lines = [f"{comment} {HEADER}"]
    size = len(lines[0])
    for entry in used + rest:
        line = f"{comment} {_clip(entry['text'], MAX_TEXT)}"
        if size + 1 + len(line) > max_chars:
            break
        lines.append(line)
        size += 1 + len(line)
    return "\n".join(lines) if len(lines) > 1 else ""


def _order(entry: dict) -> int:
    order = entry.get("order")
    return order if type(order) is int else -1


_EXPRESSION: list[str] = []


def kernel_expression() -> str:
    """A Python expression (for ``user_expressions``) that evaluates to the JSON of
    ``describe_namespace(globals())`` in a kernel with only the standard library."""
    if not _EXPRESSION:
        import inspect
        import sys

        source = inspect.getsource(sys.modules[__name__])
        _EXPRESSION.append(
            "(lambda b, g: b.exec(%r, g) or g['_run'](b.globals()))"
            "(__import__('builtins'), {'__name__': 'llamalab_kernel_names'})" % source)
    return _EXPRESSION[0]
