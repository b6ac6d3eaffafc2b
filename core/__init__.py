"""llamalab: run Meta's Llama-2 family locally, in JupyterLab and your editor, on llama.cpp.

The public API, used by the CLI, the Jupyter extension (``llamalab.extension``) and the
language server (``llamalab.lsp``)::

    from llamalab import LocalEngine, GenerationParams, locate
    engine = LocalEngine(locate())            # the default model, pulled on first use
    for piece in engine.chat([{"role": "user", "content": "Hi"}]):
        print(piece, end="")

Everything here is light to import: llama_cpp, gguf and huggingface_hub load on first use.
"""

from .api_keys import ApiKey, KeyRing
from .catalog import CATALOG, DEFAULT_MODEL, CatalogEntry, resolve
from .convert import checkpoint_license, convert_and_register, quantize_and_register
from .doctor import DoctorReport, build_report, format_report
from .engine import (AsyncEngine, AsyncTokenStream, Engine, GenerationParams, GenerationResult,
                     LocalEngine, LocalOptions, ModelDescription, RemoteEngine, SchedulerStats, TokenStream,
                     open_engine)
from .errors import (ChatTemplateError, CheckpointError, ChecksumMismatchError, ConfigError,
                     ContextOverflowError, ConversionError, EngineBusyError, EngineError,
                     InsufficientDiskSpaceError, InvalidModelFileError, LicenseNotAcceptedError,
                     LlamalabError, ModelError, ModelLoadError, ModelNotFoundError, OperationCancelledError, PullError,
                     QuantizeError, RemoteEngineError, ServerResponseError, ServerUnreachableError,
                     SignedUrlExpiredError, SourceUnreachableError, UnsafeCheckpointError,
                     UnsupportedModelError)
from .completion_rules import CursorContext
from .completion_rules import postprocess as postprocess_completion
from .completion_rules import should_stop as should_stop_completion
from .fim import FimPrompt, FimTokens, build_fim_prompt
from .healing import heal_prefix, strip_healed
from . import kernel_names
from .suggest import Cell as NotebookCell
from .suggest import SuggestionPlan, SuggestionService, SuggestionText, SuggestOptions, SuggestRequest
from .suggest import collect as collect_suggestion
from .gguf_info import GGUFInfo, read_gguf_info
from .progress import Progress, ProgressCallback
from .license import license_notice, require_license
from .pulls import default_model_name, locate, pull, pull_license
from .quantize import QUANT_TYPES, normalize_quant_type
from .store import ModelStore, StoredModel, atomic_write_text
from .templates import Message

__version__ = "0.1.0"

import logging as _logging

_logging.getLogger(__name__).addHandler(_logging.NullHandler())  # the application decides what is shown


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext llamalab``: register the ``%llama`` magics (needs the ``jupyter`` extra)."""
    import importlib

    importlib.import_module("llamalab.extension").load_ipython_extension(ipython)


def chat(*args: object, **kwargs: object) -> object:
    """An ipywidgets chat with a model, for notebooks (needs the ``jupyter`` extra);
    see ``llamalab.extension.chat`` for the arguments."""
    import importlib

    return importlib.import_module("llamalab.extension").chat(*args, **kwargs)


__all__ = [
    "ApiKey",
    "KeyRing",
    "NotebookCell",
    "SuggestionPlan",
    "SuggestionService",
    "SuggestionText",
    "SuggestOptions",
    "SuggestRequest",
    "collect_suggestion",
    "kernel_names",
    "AsyncEngine",
    "AsyncTokenStream",
    "CATALOG",
    "CatalogEntry",
    "ChatTemplateError",
    "UnsafeCheckpointError",
    "SignedUrlExpiredError",
    "QuantizeError",
    "LicenseNotAcceptedError",
    "ConversionError",
    "CheckpointError",
    "ChecksumMismatchError",
    "ConfigError",
    "ContextOverflowError",
    "DEFAULT_MODEL",
    "DoctorReport",
    "Engine",
    "EngineBusyError",
    "EngineError",
    "CursorContext",
    "FimPrompt",
    "postprocess_completion",
    "should_stop_completion",
    "FimTokens",
    "GGUFInfo",
    "GenerationParams",
    "GenerationResult",
    "InsufficientDiskSpaceError",
    "InvalidModelFileError",
    "LlamalabError",
    "LocalEngine",
    "LocalOptions",
    "Message",
    "ModelDescription",
    "ModelError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelStore",
    "OperationCancelledError",
    "QUANT_TYPES",
    "Progress",
    "ProgressCallback",
    "PullError",
    "RemoteEngine",
    "SchedulerStats",
    "RemoteEngineError",
    "ServerResponseError",
    "ServerUnreachableError",
    "SourceUnreachableError",
    "StoredModel",
    "TokenStream",
    "UnsupportedModelError",
    "__version__",
    "atomic_write_text",
    "build_fim_prompt",
    "checkpoint_license",
    "convert_and_register",
    "license_notice",
    "normalize_quant_type",
    "open_engine",
    "pull_license",
    "quantize_and_register",
    "require_license",
    "build_report",
    "chat",
    "default_model_name",
    "format_report",
    "heal_prefix",
    "locate",
    "pull",
    "read_gguf_info",
    "resolve",
    "strip_healed",
]
