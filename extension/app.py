"""``LlamalabExtension``: the jupyter_server extension that serves one model to everyone.

Installed with the ``jupyter`` extra, it is enabled automatically (the package installs
``etc/jupyter/jupyter_server_config.d/llamalab.json``). Administrators configure it like
any Jupyter application, e.g. in ``jupyter_server_config.py``::

    c.LlamalabExtension.default_model = "llama-2-7b-chat:q4_k_m"
    c.LlamalabExtension.n_ctx = 4096
    c.LlamalabExtension.n_gpu_layers = "auto"
    c.LlamalabExtension.allowed_models = ["llama-2-7b-chat:q4_k_m", "codellama-7b-instruct:q4_k_m"]

or on the command line: ``jupyter lab --LlamalabExtension.remote_url=http://gpu-box:8080``.
``LlamalabExtension.class_print_help()`` prints every option with its help.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Optional, Union

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Int, List, TraitError, Unicode, Union as UnionTrait, default, validate

from llamalab import ModelStore
from llamalab import SuggestionService, SuggestOptions

from .chat_socket import ChatSocket
from .completions import handlers as completion_handlers
from .conversation_routes import handlers as conversation_handlers
from .conversations import ConversationStore, default_folder
from .handlers import handlers as rest_handlers
from .job_routes import handlers as job_handlers
from .jobs import Jobs
from .kernel import gpu_layers
from .kernel_access import export_to_kernels, new_key
from .manager import EngineManager, ManagerConfig
from .openai import handlers as openai_handlers

__all__ = ["LlamalabExtension"]

_WILDCARDS = {"", "0.0.0.0", "::", "localhost"}


class LlamalabExtension(ExtensionApp):
    name = "llamalab"
    description = "Serve a local llama.cpp model (or a remote OpenAI-compatible one) to JupyterLab and kernels."

    # -- the model ----------------------------------------------------------------------
    default_model = Unicode(
        None, allow_none=True, config=True,
        help="""The model served when a request names none: a store name (`llamalab models list`), a
        catalog reference such as llama-2-7b-chat:q4_k_m, or a GGUF path. Unset: the first of
        allowed_models, else the embedded SmolLM2-135M-Instruct demo model (pulled on first use).""")
    n_ctx = Int(4096, config=True, help="Context window, in tokens, the model is loaded with (capped at what it was trained on).")
    n_gpu_layers = UnionTrait(
        [Int(), Unicode()], default_value="auto", config=True,
        help="""Layers offloaded to the NVIDIA GPU: "auto" fits as many as free GPU memory allows
        (keeping 512 MiB spare), -1 all, 0 none (CPU only), N exactly N.""")
    n_threads = Int(None, allow_none=True, config=True,
                    help="CPU threads for decoding; unset: about the number of physical cores.")
    n_parallel = Int(4, config=True,
                     help="""Requests the loaded model serves at once, each in its own KV sequence (a
                     "slot"): the chat panel, every notebook's ghost text and magics and a language server
                     keep their own warm prompt and are decoded together in one batch. 1 serves one
                     request at a time (in priority order). Slots share kv_size cells of KV cache.""")
    kv_size = Int(None, allow_none=True, config=True,
                  help="""KV cache cells shared by all slots; unset: n_ctx (the memory of one full window).
                  Raise it (e.g. n_ctx x n_parallel) to keep more conversations warm on a GPU with room;
                  "llamalab doctor --kv-size N" shows what fits.""")
    prompt_cache_mb = Int(1024, config=True,
                          help="""Host memory (MiB) for the prompt cache: a slot's KV state is kept there when
                          the slot goes to another request or the KV cache fills up, and restored when a
                          later prompt continues it (a conversation you return to). 0 turns it off.""")
    preload = Bool(False, config=True,
                   help="Load the default model when the server starts instead of on the first request.")

    # -- or a remote server -----------------------------------------------------------------
    remote_url = Unicode(
        None, allow_none=True, config=True,
        help="""URL of an OpenAI-compatible server (llama.cpp's llama-server, vLLM, another
        llamalab) to use instead of loading a model in this process, e.g. http://gpu-box:8080.
        Models are then the remote server's model names. Default: $LLAMALAB_REMOTE_URL.""")
    remote_api_key = Unicode(
        None, allow_none=True, config=True,
        help="""API key sent to remote_url as a Bearer token (keep it out of shared config files;
        on a JupyterHub, give each user's server its own key in $LLAMALAB_REMOTE_API_KEY, the default).""")

    @default("remote_url")
    def _remote_url_from_environment(self) -> Optional[str]:
        return os.environ.get("LLAMALAB_REMOTE_URL") or None

    @default("remote_api_key")
    def _remote_api_key_from_environment(self) -> Optional[str]:
        return os.environ.get("LLAMALAB_REMOTE_API_KEY") or None

    # -- policy and limits ------------------------------------------------------------------
    allowed_models = List(
        Unicode(), default_value=[], config=True,
        help="""The only models clients may load or pull (store names or references); empty: any
        model in the store or the catalog. The first one is the default when default_model is unset.""")
    system_prompt = Unicode("", config=True,
                            help="System prompt for chats that set none (the chat panel and %llama magics).")
    max_queued = Int(16, config=True,
                     help="""Generations running or waiting on the model at once, over all clients; one
                     more gets a 'busy' error (HTTP 429) instead of waiting without bound.""")
    max_prompt_chars = Int(200_000, config=True,
                           help="Longest message or prompt accepted, in characters; longer ones get an error.")
    completion_prefix_tokens = Int(
        512, config=True,
        help="""Ghost text: tokens of the notebook or file above the cursor in a suggestion's prompt. The
        window keeps its start while you type, so only new text is evaluated; a longer one knows more
        of the notebook but every suggestion token attends over it (on a CPU, slower).""")
    completion_context_tokens = Int(
        384, config=True,
        help="Ghost text: tokens for the kernel's variables and the notebook's first cells ahead of the window "
             "(0: none).")
    completion_suffix_tokens = Int(256, config=True,
                                   help="Ghost text: tokens after the cursor, for fill-in-the-middle models.")
    completion_time_budget_ms = Int(3000, config=True,
                                    help="Ghost text: the longest an automatic suggestion may take (0: no limit).")
    model_switch_wait_s = Int(
        300, config=True,
        help="""How long a request naming another model waits for the loaded model's running generations to
        end before it gives up with 'busy' (nothing is cancelled either way).""")
    max_tokens_limit = Int(4096, config=True, help="Largest max_tokens a client may ask for; larger requests are capped.")
    default_max_tokens = Int(512, config=True, help="max_tokens for requests that set none.")
    job_memory_mb = Int(
        0, config=True,
        help="""Memory (MB) a conversion or quantization's child process may use beyond what it maps at start-up
        and its input files (Linux RLIMIT_AS); a bad file then fails that job, not the server. 0: half the
        machine's memory, at least 4096.""")
    allow_private_pull_addresses = Bool(
        False, config=True,
        help="""Let URL pulls started from the server fetch loopback, private and link-local addresses (off:
        such pulls fail with the same message as an unknown host, so the server cannot be used to probe the
        network it sits in).""")
    store_dir = Unicode(
        None, allow_none=True, config=True,
        help="""Folder of the model store; unset: $LLAMALAB_HOME or ~/.cache/llamalab. When set, kernels
        started by this server get it as LLAMALAB_HOME too.""")
    kernel_access = Bool(
        True, config=True,
        help="""Give kernels started by this server its URL and a key (LLAMALAB_SERVER_URL and
        LLAMALAB_SERVER_KEY) so `%llama` and llamalab.chat() use this server's model instead of loading
        their own copy. The key opens only the inference routes (/llamalab/v1/*).""")

    conversations_dir = Unicode(
        None, allow_none=True, config=True,
        help="""Folder where each chat conversation is kept as a JSON file; unset: llamalab/conversations in
        the user's Jupyter data folder (`jupyter --data-dir`).""")

    @validate("n_gpu_layers")
    def _valid_layers(self, proposal: Any) -> Union[int, str]:
        try:
            return gpu_layers(proposal["value"])
        except ValueError as exc:
            raise TraitError(str(exc)) from None

    @validate("prompt_cache_mb")
    def _not_negative(self, proposal: Any) -> int:
        if proposal["value"] < 0:
            raise TraitError(f"prompt_cache_mb must be 0 (off) or more, got {proposal['value']}")
        return proposal["value"]

    @validate("completion_context_tokens", "completion_suffix_tokens", "completion_time_budget_ms", "job_memory_mb")
    def _completion_not_negative(self, proposal: Any) -> int:
        if proposal["value"] < 0:
            raise TraitError(f"{proposal['trait'].name} must be 0 or more, got {proposal['value']}")
        return proposal["value"]

    @validate("completion_prefix_tokens")
    def _completion_window(self, proposal: Any) -> int:
        if proposal["value"] < 16:
            raise TraitError(f"completion_prefix_tokens must be at least 16, got {proposal['value']}")
        return proposal["value"]

    @validate("max_queued", "max_prompt_chars", "max_tokens_limit", "default_max_tokens", "n_ctx", "n_parallel",
              "kv_size", "model_switch_wait_s")
    def _positive(self, proposal: Any) -> Optional[int]:
        if proposal["value"] is None and proposal["trait"].name == "kv_size":
            return None
        if proposal["value"] < 1:
            raise TraitError(f"{proposal['trait'].name} must be at least 1, got {proposal['value']}")
        return proposal["value"]

    # -- wiring ---------------------------------------------------------------------------
    def manager_config(self) -> ManagerConfig:
        return ManagerConfig(
            default_model=self.default_model, n_ctx=self.n_ctx, n_gpu_layers=self.n_gpu_layers,
            n_threads=self.n_threads, n_parallel=self.n_parallel, kv_size=self.kv_size,
            prompt_cache_mb=self.prompt_cache_mb, remote_url=self.remote_url or None, remote_api_key=self.remote_api_key,
            allowed_models=tuple(self.allowed_models), system_prompt=self.system_prompt,
            max_queued=self.max_queued, max_prompt_chars=self.max_prompt_chars,
            max_tokens_limit=self.max_tokens_limit, default_max_tokens=self.default_max_tokens,
            switch_wait_s=float(self.model_switch_wait_s))

    def initialize_settings(self) -> None:
        store = ModelStore(self.store_dir) if self.store_dir else ModelStore()
        self.manager = EngineManager(self.manager_config(), store, log=self.log)
        self.jobs = Jobs(store, allowed=self.manager.is_allowed, root_dir=self._root_dir(),
                         allow_private_addresses=self.allow_private_pull_addresses,
                         job_memory_mb=self.job_memory_mb or None)
        self.kernel_key: Optional[str] = new_key() if self.kernel_access else None
        self._restore_env = None
        self.suggestions = SuggestionService(SuggestOptions(
            prefix_tokens=self.completion_prefix_tokens, suffix_tokens=self.completion_suffix_tokens,
            context_tokens=self.completion_context_tokens,
            time_budget_s=self.completion_time_budget_ms / 1000 if self.completion_time_budget_ms else None))
        self.conversations = ConversationStore(
            self.conversations_dir or default_folder(getattr(self.serverapp, "data_dir", None)), log=self.log)
        self.settings.update(llamalab_manager=self.manager, llamalab_jobs=self.jobs,
                             llamalab_kernel_key=self.kernel_key, llamalab_suggestions=self.suggestions,
                             llamalab_conversations=self.conversations)
        self._export_env()
        self.log.info("llamalab: serving %s (%s)", self.manager.default_model() or "the remote server's model",
                      f"remote {self.remote_url}" if self.remote_url else "loaded on first use"
                      if not self.preload else "preloading")

    def initialize_handlers(self) -> None:
        self.handlers.extend(rest_handlers())
        self.handlers.extend(openai_handlers())
        self.handlers.extend(completion_handlers())
        self.handlers.extend(job_handlers())
        self.handlers.extend(conversation_handlers())
        self.handlers.append((r"/llamalab/chat", ChatSocket))

    def _root_dir(self) -> Optional[str]:
        """The folder the Jupyter server serves: relative checkpoint folders are taken from it."""
        app = self.serverapp
        return getattr(app, "root_dir", None) if app is not None else None

    def server_url(self) -> Optional[str]:
        """The extension's root as kernels on this machine reach it."""
        app = self.serverapp
        if app is None or app.sock:
            return None  # a Unix socket: kernels load their own model
        host = "127.0.0.1" if app.ip in _WILDCARDS else app.ip
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if app.certfile else "http"
        base = app.base_url if app.base_url.endswith("/") else app.base_url + "/"
        return f"{scheme}://{host}:{app.port}{base}llamalab"

    def _export_env(self) -> None:
        if not self.kernel_access:
            return
        restore = export_to_kernels(self.server_url(), self.kernel_key, self.store_dir)
        if self._restore_env is None:
            self._restore_env = restore

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        self._export_env()  # the port is final now (port_retries may have moved it)
        if self.preload and not self.remote_url:
            asyncio.ensure_future(self._preload())

    async def _preload(self) -> None:
        try:
            await self.manager.load(None)
        except Exception as exc:  # the server runs on; the first request will show the error
            self.log.warning("llamalab: could not preload the model: %s", exc)

    async def stop_extension(self) -> None:
        self.jobs.cancel_all()
        if self._restore_env is not None:
            self._restore_env()
            self._restore_env = None
        await self.manager.close()

