"""Reading inputs: arrays, images, CSV rows and text lines into a model-ready batch.

``.npy`` / ``.npz`` (model-ready, ``allow_pickle=False``) work for every
modality; ``.png`` / ``.jpg`` for image specs, ``.csv`` for tabular specs and
``.txt`` (one text per line) for text specs are preprocessed as the spec says
(resize + normalise, column match + standardise, tokenise). Every failure is a
`GlassboxError` with a one-line reason.
"""
from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from explain import config
from explain.errors import CorruptFile, IncompatibleInput, TooLarge, UnsafeFile
from explain.inputs.images import decode_image, image_for_display, original_copy, preprocess_image
from explain.inputs.tabular import LABEL_COLUMNS, feature_names, parse_csv
from explain.inputs.text import (
    PAD_ID,
    UNK_ID,
    detokenize,
    encode,
    spec_vocabulary,
    tokenize,
    tokens_for_display,
    vocab_index,
)
from explain.loading.source import check_zip_directory, read_source
from explain.spec import InputSpec

__all__ = [
    "InputBatch", "read_inputs", "from_array", "tokenize", "detokenize", "tokens_for_display",
    "feature_names", "image_for_display", "PAD_ID", "UNK_ID", "LABEL_COLUMNS",
]
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF")


@dataclass
class InputBatch:
    """A model-ready batch and what to show for each item.

    Attributes:
        array: [N, *spec.input_shape], dtype per spec (float32 or int64).
        display: one entry per item: uint8 [H, W, 3] images, ``{feature:
            value}`` rows (raw, unstandardised) or token lists (no padding).
        labels: [N] int labels when the file carried them, else None.
        source_names: one name per item (``file.png``, ``file.csv:3``...).
        originals: one entry per item: the picture as uploaded (uint8 [h, w, 3], a small
            copy) for images read from a picture file, None for everything else; an empty
            list when no item has one.
        notes: what reading left out or assumed, one line each (a CSV's ignored columns, a
            column taken as labels).
    """

    array: np.ndarray
    display: list[Any]
    labels: np.ndarray | None = None
    source_names: list[str] = field(default_factory=list)
    originals: list[np.ndarray | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.array.shape[0])

    @classmethod
    def from_arrays(
        cls, inputs: np.ndarray, spec: InputSpec, labels: np.ndarray | None = None, name: str = "inputs"
    ) -> InputBatch:
        """A batch from a model-ready array (checked like an uploaded ``.npy``)."""
        batch = from_array(inputs, spec, name)
        batch.labels = _check_labels(labels, len(batch), name)
        return batch

    @classmethod
    def concatenate(cls, batches: Sequence[InputBatch]) -> InputBatch:
        """One batch from several (see `concat_batches`)."""
        return concat_batches(batches)


def read_inputs(source: Any, spec: InputSpec, *, filename: str | None = None) -> InputBatch:
    """Read a file (path, bytes, file object, array, or a list of them) into a batch.

    Raises:
        IncompatibleInput: wrong shape, dtype, columns, NaN/inf, wrong modality.
        UnsafeFile: object arrays (pickles) in ``.npy`` / ``.npz``.
        TooLarge: over the upload limit or an image over the pixel limit.
        CorruptFile: unreadable files.
    """
    if isinstance(source, (list, tuple)):
        if not source:
            raise IncompatibleInput("No input files were given.")
        return concat_batches([read_inputs(s, spec) for s in source])
    if isinstance(source, np.ndarray):
        return from_array(source, spec, filename or "array")
    data, name = read_bytes(source, filename)
    kind = sniff_input_kind(data, name, spec)
    if kind == "npy":
        return from_array(load_npy(data, name), spec, name)
    if kind == "npz":
        arr, labels = load_npz(data, name)
        batch = from_array(arr, spec, name)
        batch.labels = _check_labels(labels, len(batch), name)
        return batch
    if kind == "image":
        return read_image(data, spec, name)
    if kind == "csv":
        rows = parse_csv(data, spec, name)
        return InputBatch(rows.features, rows.display, rows.labels, rows.names, notes=list(rows.notes))
    return read_text(data, spec, name)


def model_ready_array(source: Any, filename: str | None = None) -> np.ndarray | None:
    """The array of a ``.npy`` / ``.npz`` inputs file, before any spec is known; None for other files.

    Only model-ready arrays can stand in for a spec (`explain.spec.infer_spec`):
    images, CSV rows and text lines need the spec to be read at all.

    Raises:
        UnsafeFile, CorruptFile, TooLarge, IncompatibleInput: as `read_inputs` does for arrays.
    """
    data, name = read_bytes(source, filename)
    if data.startswith(b"\x93NUMPY"):
        return load_npy(data, name)
    if data[:2] == b"PK":
        return load_npz(data, name)[0]
    return None


def concat_batches(batches: Sequence[InputBatch]) -> InputBatch:
    """One batch from several; labels kept only when every part has them."""
    labels = None
    if all(b.labels is not None for b in batches):
        labels = np.concatenate([b.labels for b in batches])
    originals = [o for b in batches for o in (b.originals or [None] * len(b))]
    return InputBatch(
        np.concatenate([b.array for b in batches]),
        [d for b in batches for d in b.display],
        labels,
        [n for b in batches for n in b.source_names],
        originals if any(o is not None for o in originals) else [],
        [note for b in batches for note in b.notes],
    )


# --------------------------------------------------------------------------
# bytes and kinds
# --------------------------------------------------------------------------
def read_bytes(source: Any, filename: str | None) -> tuple[bytes, str]:
    """An input file's bytes and display name, under the same upload cap as models."""
    return read_source(source, filename, default_name="inputs")


def sniff_input_kind(data: bytes, name: str, spec: InputSpec) -> str:
    """``npy`` | ``npz`` | ``image`` | ``csv`` | ``txt`` from the bytes, then the extension."""
    ext = Path(name).suffix.lower()
    if data.startswith(b"\x93NUMPY"):
        return "npy"
    if data[:2] == b"PK":
        return "npz"
    if data.startswith(_IMAGE_MAGIC):
        if spec.modality != "image":
            raise IncompatibleInput(f"{name} is an image, but this model takes {spec.modality} inputs.")
        return "image"
    if ext in (".csv", ".tsv") or (ext not in (".txt",) and spec.modality == "tabular"):
        if spec.modality != "tabular":
            raise IncompatibleInput(f"{name} is a CSV file, but this model takes {spec.modality} inputs.",
                                    "Upload .npy/.npz arrays or the modality's own files.")
        return "csv"
    if spec.modality == "text":
        return "txt"
    raise IncompatibleInput(
        f"{name} is not an input format Glassbox reads for {spec.modality} models.",
        "Use .npy/.npz, or .png/.jpg (image), .csv (tabular), .txt (text).",
    )


def load_npy(data: bytes, name: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise UnsafeFile(
                f"{name} holds Python objects (an object array); unpickling them could run code.",
                "Save plain numeric arrays.",
            ) from None
        raise CorruptFile(f"{name} is not a valid .npy array ({exc}).") from None
    except (OSError, EOFError) as exc:
        raise CorruptFile(f"{name} is truncated or damaged ({exc}).") from None


def load_npz(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        check_zip_directory(io.BytesIO(data), name)  # before zipfile lists a directory of any claimed size
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            unpacked = sum(i.file_size for i in zf.infolist())
    except zipfile.BadZipFile as exc:
        raise CorruptFile(f"{name} is not a valid .npz archive ({exc}).") from None
    if unpacked > config.max_upload_bytes() * 4:
        raise TooLarge(f"{name} unpacks to {unpacked / 2**20:.0f} MiB, over the limit.")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            keys = list(npz.keys())
            key = "inputs" if "inputs" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise IncompatibleInput(
                    f"{name} holds arrays {', '.join(keys[:6])} but none named 'inputs'.",
                    "Name the model-ready array 'inputs' (np.savez(f, inputs=...)).",
                )
            arr = npz[key]
            labels = npz["labels"] if "labels" in keys and key != "labels" else None
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise UnsafeFile(f"{name} holds Python objects (an object array); unpickling them could run code.",
                             "Save plain numeric arrays.") from None
        raise CorruptFile(f"{name} is not a valid .npz archive ({exc}).") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise CorruptFile(f"{name} is truncated or damaged ({exc}).") from None
    return arr, labels


def _check_labels(labels: np.ndarray | None, n: int, name: str) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise IncompatibleInput(f"{name}: 'labels' must be {n} integers, got shape {labels.shape} {labels.dtype}.")
    return labels.astype(np.int64)


# --------------------------------------------------------------------------
# arrays
# --------------------------------------------------------------------------
def from_array(arr: np.ndarray, spec: InputSpec, name: str = "array") -> InputBatch:
    """Check a model-ready array against the spec and build its display items."""
    arr = np.asarray(arr)
    shape = tuple(spec.input_shape)
    if arr.dtype == object:
        raise UnsafeFile(f"{name} is an object array; Glassbox reads plain numeric arrays only.")
    if arr.ndim == len(shape):
        arr = arr[None]
    if spec.modality == "image" and arr.ndim == 4 and arr.shape[1:] == (shape[1], shape[2], shape[0]) != shape:
        arr = arr.transpose(0, 3, 1, 2)  # N,H,W,C -> N,C,H,W
    if arr.shape[1:] != shape:
        raise IncompatibleInput(
            f"{name} has samples of shape {list(arr.shape[1:])}; the model expects {list(shape)}.",
            "Arrays are batch first: [N, *input_shape].",
        )
    if arr.shape[0] == 0:
        raise IncompatibleInput(f"{name} holds no samples.")
    if spec.dtype.startswith("int"):
        arr = as_token_ids(arr, spec, name)
    else:
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise IncompatibleInput(f"{name} has dtype {arr.dtype}; the model expects numbers ({spec.dtype}).")
        arr = arr.astype(np.float32)
        check_finite(arr, name)
    names = [f"{name}[{i}]" for i in range(arr.shape[0])]
    return InputBatch(arr, [_display_item(x, spec) for x in arr], None, names)


def as_token_ids(arr: np.ndarray, spec: InputSpec, name: str) -> np.ndarray:
    """``arr`` as int64 token ids inside the spec's vocabulary, or `IncompatibleInput` naming the range:
    the one check for uploaded inputs and the API's instances (before they join anyone's batch)."""
    if not np.issubdtype(arr.dtype, np.integer):
        raise IncompatibleInput(f"{name} has dtype {arr.dtype}; this text model takes integer token ids.")
    arr = arr.astype(np.int64)
    vocab = spec_vocabulary(spec)
    top = len(vocab) if vocab else None
    if arr.min() < 0 or (top is not None and arr.max() >= top):
        raise IncompatibleInput(
            f"{name} has token ids from {int(arr.min())} to {int(arr.max())}; "
            f"the vocabulary has ids 0..{(top or 1) - 1}."
        )
    return arr


def check_finite(arr: np.ndarray, name: str) -> None:
    """Refuse NaN or infinite values, naming the first bad sample."""
    bad = ~np.isfinite(arr)
    if bad.any():
        index = int(np.argwhere(bad)[0][0])
        raise IncompatibleInput(f"{name} contains NaN or infinite values (first in sample {index}).")


def _display_item(x: np.ndarray, spec: InputSpec) -> Any:
    if spec.modality == "image":
        return image_for_display(x, spec)
    if spec.modality == "tabular":
        raw = x * np.asarray(spec.std, np.float32) + np.asarray(spec.mean, np.float32) if spec.mean and spec.std else x
        return {n: float(v) for n, v in zip(feature_names(spec), raw)}
    return tokens_for_display(x, spec)


# --------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------
def read_image(data: bytes, spec: InputSpec, name: str) -> InputBatch:
    """Decode (pixel limit checked first) and preprocess as the spec says (`explain.inputs.images`)."""
    img = decode_image(data, name)
    pixels = preprocess_image(img, spec, name)  # [C, H, W]
    return InputBatch(pixels[None], [image_for_display(pixels, spec)], None, [name], [original_copy(img)])


# --------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------
def read_text(data: bytes, spec: InputSpec, name: str) -> InputBatch:
    """One text per non-empty line, tokenised with `tokenize`."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CorruptFile(f"{name} is not UTF-8 text ({exc}).") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise IncompatibleInput(f"{name} has no text lines.")
    index = vocab_index(spec)
    ids = np.asarray([encode(line, spec, index) for line in lines], np.int64)  # [N, L]
    return InputBatch(ids, [tokens_for_display(row, spec) for row in ids], None, [f"{name}:{i + 1}" for i in range(len(lines))])


