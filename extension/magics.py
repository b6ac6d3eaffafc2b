"""``%llama`` and ``%%llama``: ask a model from a notebook cell, the answer streaming in.

    %load_ext llamalab
    %llama What is a llama?                      the prompt on the line
    %%llama -f code -t 0.2                       or in the cell (options on the line)
    Write a function that parses {filename}.     {name} takes a variable's value
    %%llama --kernel                             the kernel's variables go along
    Plot df's price against qty.

Options: ``-m MODEL``, ``-s/--system TEXT``, ``-t TEMPERATURE``, ``-n MAX_TOKENS``,
``-f markdown|code|text|json`` (``code`` also offers the code as the next cell),
``--no-history`` (neither use nor extend the conversation), ``-k/--kernel`` (tell the model the
names this kernel defines: variables with their types, functions with their signatures,
DataFrame columns with their dtypes, the ones the prompt mentions first). Commands: ``%llama reset``
(forget the conversation), ``%llama explain`` (explain the last error), ``%llama models``,
``%llama pull NAME [--accept-license]``, ``%llama chat`` (a chat widget), ``%llama help``.

The conversation is remembered across cells. Interrupting the kernel stops the answer.
Settings for every call go through IPython's config: ``%config LlamaMagics.temperature = 0.2``.
"""

from __future__ import annotations

import html
import json
import re
import shlex
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Optional

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display
from traitlets import Enum, Float, Int, TraitError, Unicode, Union as UnionTrait, validate

from llamalab import (CATALOG, GenerationParams, LlamalabError, ModelStore, Progress, TokenStream,
                      default_model_name, kernel_names, pull)

from .kernel import BackendSettings, gpu_layers, kernel_backend

__all__ = ["LlamaMagics", "extract_code", "interpolate", "keep_question_marks", "parse_line"]

FORMATS = ("markdown", "code", "text", "json")
_VALUE_FLAGS = {"-m": "model", "--model": "model", "-s": "system", "--system": "system",
                "-t": "temperature", "--temperature": "temperature", "-n": "max_tokens",
                "--max-tokens": "max_tokens", "-f": "format", "--format": "format"}
_BOOL_FLAGS = {"--no-history": "no_history", "--accept-license": "accept_license", "--force": "force",
               "-k": "kernel", "--kernel": "kernel"}
_COMMANDS = {"reset", "explain", "models", "chat", "help"}


@dataclass
class Call:
    """One ``%llama`` line, parsed."""

    command: Optional[str] = None  # None: a prompt
    prompt: str = ""
    args: list[str] = field(default_factory=list)
    model: Optional[str] = None
    system: Optional[str] = None
    temperature: Optional[float] = None
    max_tokens: Optional[int] = None
    format: str = "markdown"
    no_history: bool = False
    kernel: bool = False  # the kernel's names go into the system prompt
    accept_license: bool = False
    force: bool = False


def parse_line(line: str) -> Call:
    """Leading options, then the prompt (kept exactly as written) or a command, whose own
    options and arguments may follow it (``%llama pull NAME --accept-license``)."""
    call = Call()
    rest = _options(call, line.strip())
    word = rest.split(maxsplit=1)[0] if rest else ""
    if word in _COMMANDS or word == "pull":
        command = Call(**{**call.__dict__, "args": []})
        command.command = word
        tail = rest[len(word):].strip()
        while tail:
            tail = _options(command, tail)
            if tail:
                arg, _, tail = tail.partition(" ")
                command.args.append(arg)
                tail = tail.strip()
        if word == "pull" or not command.args:  # "%llama models are cool" is a prompt
            return command
    call.prompt = rest
    return call


def _options(call: Call, rest: str) -> str:
    """Set the options ``rest`` starts with on ``call``; return what follows them."""
    while rest.startswith("-"):
        if rest == "--" or rest.startswith(("-- ", "--\n")):  # the prompt itself starts with "-"
            return rest[2:].strip()
        try:
            tokens = shlex.split(rest, posix=True)
        except ValueError as exc:
            raise UsageError(f"%llama: {exc} in the options") from None
        flag = tokens[0]
        if flag in _BOOL_FLAGS:
            setattr(call, _BOOL_FLAGS[flag], True)
            rest = _after(rest, 1)
            continue
        if flag not in _VALUE_FLAGS:
            raise UsageError(f"%llama: unknown option {flag}; see %llama help.")
        if len(tokens) < 2:
            raise UsageError(f"%llama: {flag} needs a value.")
        _set_option(call, _VALUE_FLAGS[flag], tokens[1])
        rest = _after(rest, 2)
    return rest


def _after(text: str, count: int) -> str:
    """``text`` less its first ``count`` shell words."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    for _ in range(count):
        lexer.get_token()
    return lexer.instream.read().strip()


def _set_option(call: Call, name: str, value: str) -> None:
    try:
        if name == "temperature":
            call.temperature = float(value)
        elif name == "max_tokens":
            call.max_tokens = int(value)
        elif name == "format":
            if value not in FORMATS:
                raise UsageError(f"%llama: -f must be one of {', '.join(FORMATS)}, not {value!r}.")
            call.format = value
        else:
            setattr(call, name, value)
    except ValueError:
        raise UsageError(f"%llama: {value!r} is not a valid {name.replace('_', ' ')}.") from None


_NAME = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})")


def interpolate(text: str, namespace: dict[str, Any]) -> str:
    """Replace ``{name}`` by the variable's value; unknown names stay as written."""
    return _NAME.sub(lambda m: str(namespace[m[1]]) if m[1] in namespace else m[0], text)


_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(text: str) -> tuple[str, str]:
    """(language, code) from the first fenced block, or the whole text as Python."""
    match = _FENCE.search(text)
    if match:
        return match[1] or "python", match[2].rstrip()
    return "python", text.strip()


_MD_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_MD_TEXT_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "~": "&#126;"}
_MD_BAD_LINK = re.compile(r"\]\((?=\s*(?:javascript|vbscript|data|file)\s*:)", re.IGNORECASE)
_MD_BAD_REFERENCE = re.compile(r"^( {0,3})\[(?=[^\]\n]*\]:\s*(?:javascript|vbscript|data|file)\s*:)",
                               re.IGNORECASE | re.MULTILINE)


def _md_fence(language: str, code: str) -> str:
    """A fenced block no line of ``code`` can close: longer than any backtick run in it."""
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    fence = "`" * max(3, longest + 1)
    info = re.sub(r"[^\w+#.-]", "", language)
    return f"{fence}{info}\n{code}\n{fence}"


def _md_inline(text: str) -> str:
    """Markdown text with no active HTML: ``&<>`` escaped, code spans as escaped ``<code>``,
    other backticks and tildes as entities (so nothing here opens a code block), images as
    plain text (``!\\[``: no remote loads) and script-scheme links disarmed."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "\\" and text.startswith("`", i + 1):
            out.append("&#96;")
            i += 2
        elif char == "`":
            end = i
            while end < n and text[end] == "`":
                end += 1
            run, k, close = end - i, end, -1
            while k < n and text[k] != "\n":  # a span closes on its own line with as many backticks
                if text[k] != "`":
                    k += 1
                    continue
                stop = k
                while stop < n and text[stop] == "`":
                    stop += 1
                if stop - k == run:
                    close = k
                    break
                k = stop
            if close < 0:
                out.append("&#96;" * run)
                i = end
                continue
            code = text[end:close]
            if code.strip() and code.startswith(" ") and code.endswith(" "):
                code = code[1:-1]
            out.append(f"<code>{html.escape(code, quote=False)}</code>")
            i = close + run
        elif char == "!" and text.startswith("[", i + 1):
            out.append("!\\")
            i += 1
        else:
            out.append(_MD_TEXT_ESCAPES.get(char, char))
            i += 1
    return _MD_BAD_REFERENCE.sub(r"\1\\[", _MD_BAD_LINK.sub("]\\(", "".join(out)))


def safe_markdown(text: str) -> str:
    """``text`` (a model's answer) as Markdown that renders without active HTML, even as trusted
    output: fenced code blocks are re-emitted with fences of our own (their contents stay
    verbatim), everything else goes through ``_md_inline``."""
    lines = text.split("\n")
    out: list[str] = []
    plain: list[str] = []
    i = 0
    while i < len(lines):
        opening = _MD_FENCE.match(lines[i])
        if opening is None or (opening[1][0] == "`" and "`" in opening[2]):
            plain.append(lines[i])
            i += 1
            continue
        char, width = opening[1][0], len(opening[1])
        closing = re.compile(rf"^ {{0,3}}{re.escape(char)}{{{width},}}\s*$")
        end = i + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        if plain:
            out.append(_md_inline("\n".join(plain)))
            plain = []
        words = opening[2].split()
        out.append(_md_fence(words[0] if words else "", "\n".join(lines[i + 1:end])))
        i = end + 1
    if plain:
        out.append(_md_inline("\n".join(plain)))
    return "\n".join(out)


def render(text: str, fmt: str, final: bool) -> dict[str, Any]:
    """The display bundle for ``text`` in format ``fmt``. Markdown is made safe first
    (``safe_markdown``): the model's HTML shows as text, never as active HTML."""
    if fmt == "text":
        return {"text/plain": text}
    if fmt == "code":
        language, code = extract_code(text)
        return {"text/markdown": _md_fence(language, code), "text/plain": code}
    if fmt == "json" and final:
        _, body = extract_code(text)
        try:
            value = json.loads(body)
        except ValueError:
            return {"text/plain": text + "\n\n(the answer is not valid JSON)"}
        return {"application/json": value if isinstance(value, (dict, list)) else {"value": value},
                "text/plain": json.dumps(value, indent=2)}
    if fmt == "json":
        return {"text/plain": text}
    return {"text/markdown": safe_markdown(text) or "&#8230;", "text/plain": text}


_LINE_MAGIC_ENDING_IN_QUESTION = re.compile(r"^(?P<indent>[ \t]*)%llama(?P<args>[ \t]+\S.*?\?+)[ \t]*(?P<eol>\r?\n?)$")


def keep_question_marks(lines: list[str]) -> list[str]:
    """An IPython input transformer: ``%llama PROMPT?`` asks the model, the ``?`` included.

    IPython reads a line ending in ``?`` as a help request for the last name on it (``obj?``),
    so ``%llama What country is {city} in?`` answered "Object `in` not found." and never reached
    the model. This runs before IPython's help transform and writes such a line as the call
    IPython itself makes for a line magic; ``%llama?`` alone still shows the magic's help."""
    out = []
    for line in lines:
        match = _LINE_MAGIC_ENDING_IN_QUESTION.match(line)
        if match is None:
            out.append(line)
            continue
        args = match.group("args").strip()
        out.append(f"{match.group('indent')}get_ipython().run_line_magic('llama', {args!r}){match.group('eol')}")
    return out


@magics_class
class LlamaMagics(Magics):
    backend = Enum(["auto", "server", "local"], "auto", config=True,
                   help="auto: the Jupyter server's model when the kernel was started by one running "
                        "llamalab (LLAMALAB_SERVER_URL is set), else a model loaded in the kernel.")
    model = Unicode(None, allow_none=True, config=True, help="Model used when -m is not given.")
    system_prompt = Unicode("", config=True, help="System prompt used when --system is not given.")
    temperature = Float(0.7, config=True, help="Sampling temperature when -t is not given (0: greedy).")
    max_tokens = Int(512, config=True, help="Longest answer, in tokens, when -n is not given.")
    n_ctx = Int(4096, config=True, help="Context window of a model loaded in the kernel.")
    n_gpu_layers = UnionTrait([Int(), Unicode()], default_value="auto", config=True,
                              help='GPU layers of a model loaded in the kernel: "auto", -1 (all) or N.')
    update_interval = Float(0.1, config=True, help="Seconds between display updates while streaming.")

    @validate("n_gpu_layers")
    def _valid_layers(self, proposal: Any) -> Any:
        try:
            return gpu_layers(proposal["value"])
        except ValueError as exc:
            raise TraitError(str(exc)) from None

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.history: list[dict[str, str]] = []
        self.last_answer: Optional[str] = None

    # -- the entry point --------------------------------------------------------------
    @line_cell_magic
    def llama(self, line: str = "", cell: Optional[str] = None) -> None:
        """Ask a model: %llama PROMPT, or %%llama [options] with the prompt in the cell; %llama help.

        Options: -m MODEL, -s/--system TEXT, -t TEMPERATURE, -n MAX_TOKENS, -f markdown|code|text|json,
        --no-history, -k/--kernel (the names this kernel defines, its variables, functions and
        DataFrame columns, go into the system prompt)."""
        call = parse_line(line)
        if cell is not None:
            if call.command is not None:
                raise UsageError(f"%%llama takes options on its line, not the command {call.command!r}.")
            call.prompt = (call.prompt + "\n" + cell).strip()
        try:
            if call.command is None:
                if not call.prompt:
                    raise UsageError("%llama needs a prompt; see %llama help.")
                self.ask(interpolate(call.prompt, self.shell.user_ns), call)
            else:
                getattr(self, f"_cmd_{call.command}")(call)
        except LlamalabError as exc:
            raise UsageError(str(exc)) from None

    def settings(self) -> BackendSettings:
        return BackendSettings(mode=self.backend, n_ctx=self.n_ctx, n_gpu_layers=self.n_gpu_layers)

    def ask(self, prompt: str, call: Call) -> str:
        system = call.system if call.system is not None else self.system_prompt
        if call.kernel:
            system = "\n\n".join(part for part in (system, self.kernel_block(prompt)) if part)
        messages = ([{"role": "system", "content": system}] if system else []) + \
            ([] if call.no_history else self.history) + [{"role": "user", "content": prompt}]
        params = GenerationParams(
            max_tokens=call.max_tokens or self.max_tokens,
            temperature=self.temperature if call.temperature is None else call.temperature)
        engine = kernel_backend().engine(call.model or self.model, self.settings(), on_notice=print)
        with engine.chat(messages, params) as stream:
            answer = self._stream_into_cell(stream, call.format)
        if not call.no_history:
            self.history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        self.last_answer = answer
        if call.format == "code" and answer.strip():
            self.shell.set_next_input(extract_code(answer)[1], replace=False)
        return answer

    def kernel_block(self, near: str = "") -> str:
        """The names this kernel defines, as a comment block for a prompt ("" when there are none)."""
        return kernel_names.format_names(kernel_names.describe_namespace(self.shell.user_ns), near=near)

    def _stream_into_cell(self, stream: TokenStream, fmt: str) -> str:
        handle = display(render("", fmt, final=False), raw=True, display_id=True)
        text, last, note = "", 0.0, None
        try:
            for piece in stream:
                text += piece
                if time.monotonic() - last >= self.update_interval:
                    handle.update(render(text, fmt, final=False), raw=True)
                    last = time.monotonic()
        except KeyboardInterrupt:
            stream.cancel()
            note = "stopped"
        result = stream.result
        meta: dict[str, Any] = {"finish_reason": result.finish_reason if result else "cancelled"}
        if result is not None and result.dropped_messages:
            note = f"{result.dropped_messages} earlier messages were left out to fit the context window"
        bundle = render(text, fmt, final=True)
        if note:
            bundle["text/plain"] += f"\n[{note}]"
            if "text/markdown" in bundle:
                bundle["text/markdown"] += f"\n\n*[{note}]*"
        handle.update(bundle, raw=True, metadata={"llamalab": meta})
        return text

    # -- commands -----------------------------------------------------------------------
    def _cmd_help(self, call: Call) -> None:
        print(__doc__)

    def _cmd_reset(self, call: Call) -> None:
        self.history.clear()
        print("Conversation forgotten.")

    def _cmd_explain(self, call: Call) -> None:
        error = getattr(sys, "last_value", None)
        if error is None:
            raise UsageError("there is no error to explain yet: run the failing cell first.")
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        trace = re.sub(r"\x1b\[[0-9;]*m", "", trace)[-6000:]
        prompt = ("Explain this Python error in a few sentences, then show how to fix it.\n\n"
                  f"```\n{trace.strip()}\n```")
        self.ask(prompt, call)

    def _cmd_models(self, call: Call) -> None:
        store = ModelStore()
        rows = ["| model | quantization | size | source |", "| --- | --- | --- | --- |"]
        rows += [f"| {m.name} | {m.quantization} | {m.size_bytes / 1e9:.2f} GB | {m.source} |" for m in store.list()]
        backend = kernel_backend().describe_choice(self.settings())
        lines = [f"Models in {store.root} (the magics use {backend}; default "
                 f"{self.model or default_model_name()}):", "", *rows, "",
                 "Catalog (pull with `%llama pull NAME`): " + ", ".join(e.name for e in CATALOG)]
        text = "\n".join(lines)
        display({"text/markdown": text, "text/plain": text}, raw=True)

    def _cmd_pull(self, call: Call) -> None:
        if len(call.args) != 1:
            raise UsageError("usage: %llama pull NAME [--accept-license] [--force]")
        progress = _ProgressView(call.args[0])
        stored = pull(call.args[0], progress=progress, accept_license=call.accept_license, force=call.force)
        progress.finish(f"{stored.name}: {stored.size_bytes / 1e9:.2f} GB in the store")

    def _cmd_chat(self, call: Call) -> None:
        from .widgets import ChatWidget

        display(ChatWidget(model=call.model or self.model, system=call.system or self.system_prompt or None,
                           settings=self.settings()))


class _ProgressView:
    """A progress bar widget (text where ipywidgets is missing) fed by ``Progress`` events."""

    def __init__(self, name: str) -> None:
        self._last = 0.0
        try:
            import ipywidgets as w
        except ImportError:
            self._bar = None
            self._handle = display({"text/plain": f"pulling {name}..."}, raw=True, display_id=True)
            return
        self._bar = w.FloatProgress(min=0.0, max=1.0, description="pull", layout=w.Layout(width="50%"))
        self._label = w.Label(f"{name}: starting")
        display(w.HBox([self._bar, self._label]))

    def __call__(self, p: Progress) -> None:
        if time.monotonic() - self._last < 0.1 and (p.total is None or p.done < p.total):
            return
        self._last = time.monotonic()
        amount = f"{p.done / 1e6:.1f}" + (f" / {p.total / 1e6:.1f} MB" if p.total else " MB")
        if self._bar is None:
            self._handle.update({"text/plain": f"{p.stage}: {amount}"}, raw=True)
        else:
            self._bar.value = p.fraction or 0.0
            self._label.value = f"{p.stage}: {amount}"

    def finish(self, text: str) -> None:
        if self._bar is None:
            self._handle.update({"text/plain": text}, raw=True)
        else:
            self._bar.value = 1.0
            self._bar.bar_style = "success"
            self._label.value = text
