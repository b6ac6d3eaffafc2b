"""``ChatWidget``: a chat with the model in plain ipywidgets (JupyterLab, Notebook 7, VS Code).

The history above, the input box with Send and Stop below, the model's name on top and a
status line under it. An answer is generated on a background thread and streams into the
history, so the kernel stays free to take the Stop click (which cancels the generation
within a token). ``ask(text)`` and ``stop()`` do from code what the buttons do.
"""

from __future__ import annotations

import html
import threading
import time
from typing import Any, Optional

import ipywidgets as w

from llamalab import Engine, GenerationParams, LlamalabError

from .kernel import BackendSettings, kernel_backend

__all__ = ["ChatWidget"]

_BUBBLE = ("<div style='white-space: pre-wrap; padding: 4px 8px; margin: 2px 0; border-radius: 6px; "
           "background: {bg}'><b>{who}</b><br>{text}</div>")


def _bubble(who: str, text: str) -> str:
    bg = "var(--jp-layout-color2, #f0f0f0)" if who == "You" else "var(--jp-layout-color1, #ffffff)"
    return _BUBBLE.format(bg=bg, who=html.escape(who), text=html.escape(text) or "&#8230;")


class ChatWidget(w.VBox):
    def __init__(self, model: Optional[str] = None, *, system: Optional[str] = None, engine: Optional[Engine] = None,
                 settings: Optional[BackendSettings] = None, params: Optional[GenerationParams] = None,
                 update_interval: float = 0.1) -> None:
        self.model = model
        self.system = system
        self.params = params or GenerationParams()
        self.messages: list[dict[str, str]] = []
        self._engine = engine
        self._settings = settings or BackendSettings()
        self._interval = update_interval
        self._thread: Optional[threading.Thread] = None
        self._stream: Any = None
        self._stop = threading.Event()

        self.header = w.HTML(f"<b>llamalab</b> &middot; {html.escape(model or 'default model')}")
        self.history_box = w.VBox([], layout=w.Layout(max_height="400px", overflow="auto"))
        self.input = w.Textarea(placeholder="Ask something, then press Send", layout=w.Layout(width="100%"))
        self.send_button = w.Button(description="Send", button_style="primary", icon="paper-plane")
        self.stop_button = w.Button(description="Stop", disabled=True, icon="stop")
        self.status = w.HTML("")
        self.send_button.on_click(lambda _: self.ask())
        self.stop_button.on_click(lambda _: self.stop())
        super().__init__([self.header, self.history_box, self.input, w.HBox([self.send_button, self.stop_button]),
                          self.status])

    # -- what the buttons do ----------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def ask(self, text: Optional[str] = None) -> Optional[threading.Thread]:
        """Send ``text`` (default: the input box) and stream the answer; returns the thread."""
        text = (self.input.value if text is None else text).strip()
        if not text or self.busy:
            return None
        self.input.value = ""
        question = w.HTML(_bubble("You", text))
        answer = w.HTML(_bubble("Model", ""))
        self.history_box.children = (*self.history_box.children, question, answer)
        self._stop.clear()
        self.send_button.disabled, self.stop_button.disabled = True, False
        self.status.value = "<i>thinking&#8230;</i>"
        self._thread = threading.Thread(target=self._answer, args=(text, answer), daemon=True,
                                        name="llamalab-chat-widget")
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()
        if self._stream is not None:
            self._stream.cancel()

    def wait(self, timeout: Optional[float] = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the background thread ----------------------------------------------------------
    def _get_engine(self) -> Engine:
        if self._engine is not None:
            return self._engine
        return kernel_backend().engine(self.model, self._settings,
                                       on_notice=lambda n: setattr(self.status, "value", html.escape(n)))

    def _answer(self, text: str, bubble: w.HTML) -> None:
        history = ([{"role": "system", "content": self.system}] if self.system else []) + self.messages
        reply = ""
        try:
            engine = self._get_engine()
            name = engine.describe().name
            self.header.value = f"<b>llamalab</b> &middot; {html.escape(name)}"
            self._stream = engine.chat(history + [{"role": "user", "content": text}], self.params)
            if self._stop.is_set():
                self._stream.cancel()
            last = 0.0
            for piece in self._stream:
                reply += piece
                if time.monotonic() - last >= self._interval:
                    bubble.value = _bubble("Model", reply)
                    last = time.monotonic()
            bubble.value = _bubble("Model", reply)
            result = self._stream.result
            self.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
            if result.finish_reason == "cancelled":
                self.status.value = "<i>stopped</i>"
            else:
                rate = result.completion_tokens / result.duration_s if result.duration_s else 0.0
                self.status.value = f"{result.completion_tokens} tokens, {rate:.1f} tokens/s"
        except LlamalabError as exc:
            bubble.value = _bubble("Model", reply)
            self.status.value = f"<span style='color: var(--jp-error-color1, red)'>{html.escape(str(exc))}</span>"
        except Exception as exc:  # shown, not lost on a thread nobody watches
            self.status.value = f"<span style='color: red'>{html.escape(type(exc).__name__)}: {html.escape(str(exc))}</span>"
        finally:
            self._stream = None
            self.send_button.disabled, self.stop_button.disabled = False, True

    def reset(self) -> None:
        """Forget the conversation and clear the history."""
        self.stop()
        self.messages = []
        self.history_box.children = ()
        self.status.value = ""
