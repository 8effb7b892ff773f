"""Content digests: the one way Glassbox names bytes and arrays by what they hold.

`digest_bytes` is the sha256 of a file's bytes (a model's ``LoadedModel.sha256``, a log or
checkpoint in the report, an upload in the session). `digest_array` is the sha256 of an
array's dtype, shape and bytes, so the same bytes read as another dtype or shape never share
a digest (an attribution cache key, a page's cache key, the report's inputs).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import numpy as np


def digest_bytes(data: bytes | bytearray | memoryview) -> str:
    """sha256 of ``data`` as 64 hex characters."""
    return hashlib.sha256(data).hexdigest()


def digest_array(array: Any) -> str:
    """sha256 of an array's dtype (with byte order), shape and C-ordered bytes, as hex.

    Equal values of equal dtype and shape give equal digests whatever the memory layout
    (a strided view and its copy agree); a different dtype or shape gives another digest.
    """
    arr = np.ascontiguousarray(np.asarray(array))
    h = hashlib.sha256()
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def digest_base64(data: bytes) -> str:
    """sha256 of ``data`` in base64 (a Content-Security-Policy's ``'sha256-…'`` source of a script)."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 of ``data`` under ``key`` (a signed sign-in cookie)."""
    return hmac.new(key, data, hashlib.sha256).digest()
