"""Engines: one model behind one interface, local (llama.cpp) or remote (OpenAI-compatible)."""

from .aio import AsyncEngine, AsyncTokenStream
from .base import Engine, FinishReason, GenerationParams, GenerationResult, ModelDescription, TokenStream
from .local import LocalEngine
from .opening import LocalOptions, open_engine
from .remote import RemoteEngine
from .slots import SchedulerStats

__all__ = [
    "AsyncEngine",
    "AsyncTokenStream",
    "Engine",
    "FinishReason",
    "GenerationParams",
    "GenerationResult",
    "LocalEngine",
    "LocalOptions",
    "ModelDescription",
    "RemoteEngine",
    "SchedulerStats",
    "TokenStream",
    "open_engine",
]
