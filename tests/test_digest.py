"""One digest for bytes and arrays (explain/digest.py), and no other hashing of content."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from explain.digest import digest_array, digest_base64, digest_bytes, hmac_sha256

ROOT = Path(__file__).resolve().parent.parent


def test_digest_bytes_is_the_sha256_a_model_is_named_by():
    assert digest_bytes(b"glassbox") == hashlib.sha256(b"glassbox").hexdigest()
    assert digest_bytes(bytearray(b"glassbox")) == digest_bytes(memoryview(b"glassbox")) == digest_bytes(b"glassbox")


def test_a_scripts_policy_hash_and_a_cookies_signature_are_the_standard_ones():
    import base64
    import hmac

    assert digest_base64(b"alert(1)") == base64.b64encode(hashlib.sha256(b"alert(1)").digest()).decode()
    assert hmac_sha256(b"key", b"payload") == hmac.new(b"key", b"payload", hashlib.sha256).digest()


def test_same_values_same_digest_whatever_the_layout():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert digest_array(a) == digest_array(a.copy()) == digest_array(np.asfortranarray(a))
    view = np.arange(24, dtype=np.float32).reshape(3, 8)[:, ::2]  # a strided view ...
    assert digest_array(view) == digest_array(np.ascontiguousarray(view))  # ... and its copy agree
    assert digest_array([[1, 2], [3, 4]]) == digest_array(np.array([[1, 2], [3, 4]]))


def test_same_bytes_other_dtype_or_shape_is_another_digest():
    a = np.arange(6, dtype=np.int32)
    as_float = a.view(np.float32)  # the very same bytes read as float32
    assert as_float.tobytes() == a.tobytes()
    assert digest_array(as_float) != digest_array(a)
    assert digest_array(a.reshape(2, 3)) != digest_array(a) != digest_array(a.reshape(3, 2))
    assert digest_array(a.astype(">i4")) != digest_array(a)  # byte order is part of the dtype
    assert digest_array(a) != digest_bytes(a.tobytes())


def test_no_other_module_hashes_content():
    """Pages, ui and the library name bytes and arrays only through explain/digest.py."""
    found = []
    for folder in ("explain", "pages", "ui"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == ROOT / "explain" / "digest.py":
                continue
            if re.search(r"^\s*(import hashlib|from hashlib )", path.read_text(), re.M):
                found.append(str(path.relative_to(ROOT)))
    assert found == []
