"""Glassbox's library: load, explain and report on PyTorch models.

Never imports streamlit: usable from a notebook, the CLI and tests exactly as
from the app.
"""
from .attribution import Attribution
from .errors import (
    CorruptFile,
    GlassboxError,
    IncompatibleInput,
    InputRefused,
    TooLarge,
    UnsafeFile,
    UsageError,
)
from .finding import Finding
from .model import LoadedModel
from .params import ParamSpec
from .spec import InputSpec, infer_spec

__all__ = [
    "Attribution",
    "CorruptFile",
    "Finding",
    "GlassboxError",
    "IncompatibleInput",
    "InputRefused",
    "InputSpec",
    "LoadedModel",
    "ParamSpec",
    "TooLarge",
    "UnsafeFile",
    "UsageError",
    "infer_spec",
]
