"""Ground-truth masks from a user's file (the localisation metrics' input)."""
from __future__ import annotations

import io
from typing import Any

import numpy as np

from explain.errors import InputRefused, one_line
from explain.loading.source import read_source


def read_masks(source: Any, filename: str | None = None) -> np.ndarray:
    """Masks from a ``.npy``, or the ``masks`` array (else the only array) of a ``.npz``.

    Args:
        source: a path, bytes or a ``(name, bytes)`` pair (`read_source`: the upload cap applies).

    Raises:
        InputRefused: not a numpy file, a pickle, or an ``.npz`` without one clear array.
    """
    data, name = read_source(source, filename, default_name="masks")
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputRefused(f"Cannot read the masks {name}: {one_line(exc, typed=False)}",
                           "Give a .npy or .npz of booleans, one mask per input.") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        keys = list(loaded.files)
        if "masks" not in keys and len(keys) != 1:
            raise InputRefused(f"{name} holds {keys}; expected one array, or one named 'masks'.")
        return np.asarray(loaded["masks" if "masks" in keys else keys[0]])
    return np.asarray(loaded)
