"""The exceptions llamalab raises, one small tree.

Every message is one line that names the problem and says how to fix it, so a CLI,
a Jupyter panel or a language server can show ``str(error)`` to a person as it is.
Errors from third-party libraries (llama_cpp, httpx, huggingface_hub, OSError) are
translated into these at the boundary where they happen.

    LlamalabError
     ├── ModelError
     │    ├── ModelNotFoundError        unknown model name or missing file
     │    ├── InvalidModelFileError     not GGUF, truncated, damaged
     │    ├── UnsupportedModelError     an architecture llama.cpp cannot run
     │    └── ModelLoadError            llama.cpp refused to load the file
     ├── PullError
     │    ├── ChecksumMismatchError     sha256 differs from the expected one
     │    ├── InsufficientDiskSpaceError
     │    ├── SourceUnreachableError    the Hub, a URL or the package index cannot be reached
     │    └── SignedUrlExpiredError     Meta's signed URL expired or was used too often (HTTP 403)
     ├── LicenseNotAcceptedError        the model's licence must be accepted first
     ├── OperationCancelledError        a pull, conversion or quantization was cancelled
     ├── ConversionError
     │    ├── CheckpointError           missing/extra shard, params.json contradicting shapes, truncated .pth
     │    └── UnsafeCheckpointError     a pickle that tries to run code or load an unknown class
     ├── QuantizeError                  llama.cpp's quantizer failed or the type is unknown
     ├── EngineError
     │    ├── ContextOverflowError      the prompt does not fit the context window
     │    ├── EngineBusyError           too many requests already queued on one model
     │    ├── ChatTemplateError         no usable chat template / bad message list
     │    └── RemoteEngineError
     │         ├── ServerUnreachableError
     │         └── ServerResponseError  the server answered with an error
     └── ConfigError                    a bad setting or argument
"""

from __future__ import annotations

__all__ = [
    "LlamalabError",
    "ModelError",
    "ModelNotFoundError",
    "InvalidModelFileError",
    "UnsupportedModelError",
    "ModelLoadError",
    "PullError",
    "ChecksumMismatchError",
    "InsufficientDiskSpaceError",
    "SourceUnreachableError",
    "SignedUrlExpiredError",
    "LicenseNotAcceptedError",
    "OperationCancelledError",
    "ConversionError",
    "CheckpointError",
    "UnsafeCheckpointError",
    "QuantizeError",
    "EngineError",
    "ContextOverflowError",
    "EngineBusyError",
    "ChatTemplateError",
    "RemoteEngineError",
    "ServerUnreachableError",
    "ServerResponseError",
    "ConfigError",
]


class LlamalabError(Exception):
    """Base of every error llamalab raises on purpose; its text is meant for a person."""


class ModelError(LlamalabError):
    pass


class ModelNotFoundError(ModelError):
    pass


class InvalidModelFileError(ModelError):
    pass


class UnsupportedModelError(ModelError):
    pass


class ModelLoadError(ModelError):
    pass


class PullError(LlamalabError):
    pass


class ChecksumMismatchError(PullError):
    pass


class InsufficientDiskSpaceError(PullError):
    pass


class SourceUnreachableError(PullError):
    pass


class SignedUrlExpiredError(PullError):
    pass


class LicenseNotAcceptedError(LlamalabError):
    """``license`` is the licence's id (e.g. ``llama2``), ``license_url`` where to read it."""

    def __init__(self, message: str, *, license: str | None = None, license_url: str | None = None) -> None:
        super().__init__(message)
        self.license = license
        self.license_url = license_url


class OperationCancelledError(LlamalabError):
    """Raised inside a long step when its ``cancel`` event is set; its partial files are gone."""


class ConversionError(LlamalabError):
    pass


class CheckpointError(ConversionError):
    pass


class UnsafeCheckpointError(ConversionError):
    pass


class QuantizeError(LlamalabError):
    pass


class EngineError(LlamalabError):
    pass


class ContextOverflowError(EngineError):
    pass


class EngineBusyError(EngineError):
    pass


class ChatTemplateError(EngineError):
    pass


class RemoteEngineError(EngineError):
    pass


class ServerUnreachableError(RemoteEngineError):
    pass


class ServerResponseError(RemoteEngineError):
    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ConfigError(LlamalabError):
    pass
