"""The child process that runs one conversion or quantization for the Jupyter server's ``Jobs``.

``python -m llamalab.extension.job_worker FD``: ``FD`` is one end of a socket pair whose other
end the server holds. The server sends one JSON message, the job::

    {"call": "llamalab.extension.job_worker:convert", "kwargs": {...}, "store_root": "...",
     "memory_mb": 4096, "inputs": ["/path/read", ...], "sys_path": [...]}

The worker imports what the work needs, then caps its own address space (``RLIMIT_AS``, Linux)
at what it already maps, plus the size of the input files (they may be mapped into memory),
plus ``memory_mb``; the quantizer's own child process inherits the cap. A bad file that asks
for more memory gets a ``MemoryError`` here, and the server goes on.

Every message from the worker gets one reply (JSON both ways, never pickle):

- ``{"op": "progress", stage, done, total, unit, message}`` → ``{"cancel": bool}``; on ``true``
  the work's cancel event is set and the step stops at its next report, deleting its partial files;
- ``{"op": "allowed", "name"}`` → ``{"allowed": bool}``: the server's allow-list, asked for every
  name the step would register;
- ``{"op": "folder", "path"}`` → ``{}``: the folder the step writes in, told before it writes, so
  the server can delete the leftovers if it has to kill the worker;

and, last, without reply, ``{"op": "done", "stored_name"}``, ``{"op": "cancelled", "message"}`` or
``{"op": "error", "type", "message", "memory", "traceback"}``.

The server's side of this is ``run_in_child``: it starts the worker in its own process group,
answers it, turns its last message into a return value or the same llamalab error class, and kills
the group (then deletes what the worker wrote in the folders it announced) when a cancel is not
answered within ``grace`` seconds.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable, Optional

from llamalab import ConversionError, LlamalabError, ModelStore, OperationCancelledError, Progress, QuantizeError

__all__ = ["convert", "quantize", "main", "run_in_child"]

_log = logging.getLogger(__name__)

MAX_MESSAGE = 1 << 20


class _Channel:
    """Request and reply over the socket to the server (one at a time)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def ask(self, message: dict) -> dict:
        with self._lock:
            self._conn.send_bytes(json.dumps(message).encode())
            return json.loads(self._conn.recv_bytes(MAX_MESSAGE))

    def tell(self, message: dict) -> None:
        with self._lock:
            self._conn.send_bytes(json.dumps(message).encode())


class _WorkerStore(ModelStore):
    """The server's store as the worker sees it: names are checked against the server's
    allow-list, and each model folder is told to the server before anything is written in it."""

    def __init__(self, root: str, channel: _Channel) -> None:
        super().__init__(root)
        self._channel = channel

    def validate_name(self, name: str) -> str:  # type: ignore[override]
        from .errors import ModelNotAllowedError
        from .jobs import _not_allowed

        ModelStore.validate_name(name)
        if not self._channel.ask({"op": "allowed", "name": name}).get("allowed"):
            raise ModelNotAllowedError(_not_allowed(name))
        return name

    def model_dir(self, name: str) -> Path:
        folder = super().model_dir(name)
        self._channel.ask({"op": "folder", "path": str(folder)})
        return folder


# -- the work a job can ask for ------------------------------------------------------------
def convert(*, store: ModelStore, progress: Callable[[Progress], None], cancel: threading.Event,
            source: str, quant: Optional[str], name: Optional[str], accept_license: bool) -> str:
    from llamalab import convert_and_register

    return convert_and_register(source, quant=quant, name=name, accept_license=accept_license, store=store,
                                progress=progress, cancel=cancel).name


def quantize(*, store: ModelStore, progress: Callable[[Progress], None], cancel: threading.Event,
             source: str, quant: str, name: Optional[str]) -> str:
    from llamalab import quantize_and_register

    return quantize_and_register(source, quant, name=name, store=store, progress=progress, cancel=cancel).name


def _load(call: str) -> Callable[..., str]:
    module, _, attr = call.partition(":")
    return getattr(importlib.import_module(module), attr)


def _preload() -> None:
    """Import what the steps import lazily, so the memory cap is measured with it mapped."""
    for module in ("numpy", "llamalab.convert", "llamalab.quantize", "llama_cpp"):
        with contextlib.suppress(Exception):
            importlib.import_module(module)


def _mapped_bytes() -> Optional[int]:
    """This process's address space now (``VmSize``), or None where /proc is not there."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _input_bytes(paths: list[str]) -> int:
    total = 0
    for raw in paths:
        path = Path(raw)
        files = path.iterdir() if path.is_dir() else [path]
        for entry in files:
            with contextlib.suppress(OSError):
                if entry.is_file():
                    total += entry.stat().st_size
    return total


def limit_memory(memory_mb: int, inputs: list[str]) -> Optional[int]:
    """Cap the address space at what is mapped now + the inputs + ``memory_mb``; the cap in bytes,
    or None where the platform has no such limit (not Linux)."""
    try:
        import resource
    except ImportError:
        return None
    now = _mapped_bytes()
    if now is None or memory_mb <= 0:
        return None
    cap = now + _input_bytes(inputs) + memory_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return cap


def _run(spec: dict, channel: _Channel) -> dict:
    cancel = threading.Event()

    def progress(p: Progress) -> None:
        reply = channel.ask({"op": "progress", "stage": p.stage, "done": p.done, "total": p.total,
                             "unit": p.unit, "message": p.message})
        if reply.get("cancel"):
            cancel.set()

    try:
        for entry in reversed(spec.get("sys_path", [])):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        work = _load(spec["call"])
        _preload()
        limit_memory(int(spec.get("memory_mb", 0)), list(spec.get("inputs", [])))
        store = _WorkerStore(spec["store_root"], channel)
        name = work(store=store, progress=progress, cancel=cancel, **spec.get("kwargs", {}))
        return {"op": "done", "stored_name": name}
    except OperationCancelledError as exc:
        return {"op": "cancelled", "message": str(exc)}
    except MemoryError:
        return {"op": "error", "type": "MemoryError", "message": "out of memory", "memory": True}
    except LlamalabError as exc:
        return {"op": "error", "type": type(exc).__name__, "message": str(exc), "memory": False}
    except Exception as exc:  # unexpected: the server logs the traceback
        return {"op": "error", "type": type(exc).__name__, "message": str(exc), "memory": False,
                "traceback": traceback.format_exc()}


def _end_with_the_server() -> None:
    """Linux: a SIGTERM when the server dies, which unwinds the step (its partial files and the
    quantizer's process go with it) instead of leaving it running alone."""
    def stop(signum: int, frame: object) -> None:
        raise SystemExit(1)

    signal.signal(signal.SIGTERM, stop)
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the server was already gone
            raise SystemExit(1)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _end_with_the_server()
    conn = Connection(int(argv[0]))
    channel = _Channel(conn)
    try:
        spec = json.loads(conn.recv_bytes(MAX_MESSAGE))
        channel.tell(_run(spec, channel))
    except (EOFError, OSError):  # the server went away: nobody to report to
        return 1
    finally:
        conn.close()
    return 0


# -- the server's side ------------------------------------------------------------------------
def run_in_child(spec: dict, *, kind: str, memory_mb: int, progress: Callable[[Progress], None],
                 cancel: threading.Event, allowed: Callable[[str], bool], store: ModelStore,
                 grace: float = 0.5, started: Callable[[Optional[int]], None] = lambda pid: None) -> str:
    """Run ``spec`` in a worker process; the name it registered, or its error raised here."""
    ours, theirs = socket.socketpair()
    env = {**os.environ, "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2")}
    try:
        child = subprocess.Popen([sys.executable, "-m", __name__, str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                                 stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    finally:
        theirs.close()
    conn = Connection(ours.detach())
    folders: dict[Path, Optional[set[str]]] = {}  # announced folder -> its entries then (None: it was new)
    started(child.pid)
    last: Optional[dict] = None
    try:
        conn.send_bytes(json.dumps({**spec, "memory_mb": memory_mb, "sys_path": sys.path}).encode())
        last = _serve(conn, child, folders, progress, cancel, allowed, grace)
    finally:
        if last is not None:  # it said its last word and cleaned up: let it exit
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=10)
        if last is None or child.poll() is None:  # stuck, cancelled or crashed: the whole group goes
            with contextlib.suppress(OSError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        if last is None:
            _remove_leftovers(folders, store)
        conn.close()
        started(None)
    return _outcome(last, child.returncode, kind, memory_mb, cancel)


def _serve(conn: Connection, child: subprocess.Popen, folders: dict[Path, Optional[set[str]]],
           progress: Callable[[Progress], None], cancel: threading.Event, allowed: Callable[[str], bool],
           grace: float) -> Optional[dict]:
    """Answer the worker until its last message (returned), its end (None) or a cancel it does
    not answer within ``grace`` seconds (None)."""
    kill_at: Optional[float] = None
    while True:
        if cancel.is_set() and kill_at is None:
            kill_at = time.monotonic() + grace
        if kill_at is not None and time.monotonic() >= kill_at:
            return None
        try:
            if not conn.poll(0.05):
                if child.poll() is not None and not conn.poll(0):
                    return None
                continue
            message = json.loads(conn.recv_bytes(MAX_MESSAGE))
        except (EOFError, OSError, ValueError):
            return None
        op = message.get("op")
        if op in ("done", "cancelled", "error"):
            return message
        reply: dict = {}
        if op == "progress":
            progress(Progress(stage=str(message.get("stage", "")), done=int(message.get("done") or 0),
                              total=message.get("total"), unit=str(message.get("unit", "B")),
                              message=str(message.get("message", ""))))
            reply = {"cancel": cancel.is_set()}
        elif op == "allowed":
            reply = {"allowed": bool(allowed(str(message.get("name", ""))))}
        elif op == "folder":
            folder = Path(str(message.get("path", "")))
            if folder not in folders:
                folders[folder] = {e.name for e in folder.iterdir()} if folder.is_dir() else None
        try:
            conn.send_bytes(json.dumps(reply).encode())
        except OSError:
            return None


def _remove_leftovers(folders: dict[Path, Optional[set[str]]], store: ModelStore) -> None:
    """Delete what a killed worker wrote in the folders it announced (never a registered file),
    and those folders themselves when it made them and they are empty now."""
    with contextlib.suppress(Exception):
        registered = {m.file.resolve() for m in store.list()}
        for folder, before in folders.items():
            if folder.is_dir():
                for entry in folder.iterdir():
                    if (before is None or entry.name not in before) and entry.resolve() not in registered:
                        if entry.is_dir() and not entry.is_symlink():
                            shutil.rmtree(entry, ignore_errors=True)
                        else:
                            with contextlib.suppress(OSError):
                                entry.unlink()
            if before is None:
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _outcome(last: Optional[dict], returncode: Optional[int], kind: str, memory_mb: int,
             cancel: threading.Event) -> str:
    what = "conversion" if kind == "convert" else "quantization"
    failure = ConversionError if kind == "convert" else QuantizeError
    if last is not None and last.get("op") == "done":
        return str(last["stored_name"])
    if last is not None and last.get("op") == "cancelled" or (last is None and cancel.is_set()):
        raise OperationCancelledError(f"the {what} was cancelled; its partial files were deleted.")
    if last is None:
        how = f"signal {-returncode}" if returncode is not None and returncode < 0 else f"exit code {returncode}"
        raise failure(f"the {what}'s process ended unexpectedly ({how}); if the machine ran short of memory, the {what} may need more than {memory_mb} MB: "
                      "raise job_memory_mb.")
    if last.get("memory"):
        raise failure(f"the {what} needed more than {memory_mb} MB of memory; raise job_memory_mb "
                      "(c.LlamalabExtension.job_memory_mb) if the file is genuine.")
    raise _rebuilt(str(last.get("type", "")), str(last.get("message", "")), last.get("traceback"))


def _rebuilt(type_name: str, message: str, trace: Optional[str]) -> Exception:
    """The worker's error as the same llamalab class (by name, never unpickled); anything else
    is logged with the worker's traceback and reported as an internal error of that type."""
    from . import errors as extension_errors
    import llamalab

    for namespace in (extension_errors, llamalab):
        cls = getattr(namespace, type_name, None)
        if isinstance(cls, type) and issubclass(cls, LlamalabError):
            return cls(message)
    if trace:
        _log.error("the job's worker failed:\n%s", trace)
    return type(type_name or "WorkerError", (RuntimeError,), {})(message)


if __name__ == "__main__":
    raise SystemExit(main())
