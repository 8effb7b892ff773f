"""A whole dataset as a `Dataset`: rows read shard by shard, as `explain.inputs.reading` reads them.

What a dataset can be (the one reader per kind stays `explain.inputs.reading`):

- one ``.npy`` / ``.npz`` / ``.csv`` / ``.txt`` file (path, bytes, ``(name, bytes)``):
  read whole with `read_inputs`, exactly as ``python -m explain attribute`` reads it;
- a folder of images, a zip of images, or a list of image files: one row per image,
  decoded only when its shard runs (`read_image`), so a large folder is never all in
  memory. Images in sub-folders named after the spec's classes (``cat/1.png``) get
  those classes as labels, like torchvision's ``ImageFolder``;
- a model-ready array (with optional labels).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from explain import config
from explain.errors import IncompatibleInput
from explain.inputs.reading import InputBatch, read_bytes, read_image, read_inputs
from explain.loading.source import MAX_DATASET_ZIP_ENTRIES, open_zip, read_source, read_zip_member
from explain.spec import InputSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")
#: rows per shard when the caller says nothing: small enough that summaries stream.
DEFAULT_SHARD_ROWS = 64


@dataclass
class Dataset:
    """Rows of one dataset, read a shard at a time.

    Attributes:
        name: display name (file or folder name).
        spec: the model's spec the rows are read for.
        names: one name per row (``file.csv:3``, ``cats/1.png``...).
        labels: [N] int labels when the source carried them, else None.
    """

    name: str
    spec: InputSpec
    names: list[str]
    labels: np.ndarray | None
    _read: Callable[[int, int], np.ndarray]  # (start, stop) -> model-ready [stop - start, *input_shape]

    def __len__(self) -> int:
        return len(self.names)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Model-ready rows ``start:stop`` ([n, *input_shape], dtype per spec)."""
        return self._read(start, stop)

    def shards(self, shard_rows: int = DEFAULT_SHARD_ROWS) -> list[tuple[int, int]]:
        """``(start, stop)`` of each shard, in order; the last may be shorter."""
        size = max(1, int(shard_rows))
        return [(s, min(s + size, len(self))) for s in range(0, len(self), size)]

    def mean_row(self, shard_rows: int = DEFAULT_SHARD_ROWS) -> np.ndarray:
        """The float32 mean of every row [1, *input_shape], read shard by shard."""
        total = None
        for start, stop in self.shards(shard_rows):
            part = self.rows(start, stop).astype(np.float64).sum(axis=0)
            total = part if total is None else total + part
        return (total / len(self))[None].astype(np.float32)


def from_batch(batch: InputBatch, spec: InputSpec, name: str) -> Dataset:
    """A dataset over an already read batch."""
    array = np.asarray(batch.array)
    names = list(batch.source_names) or [f"{name}[{i}]" for i in range(len(array))]
    return Dataset(name, spec, names, batch.labels, lambda start, stop: array[start:stop])


def read_dataset(source: Any, spec: InputSpec, *, filename: str | None = None) -> Dataset:
    """A `Dataset` from a path (file or folder), bytes, ``(name, bytes)``, an array, or a list of image files.

    Raises:
        IncompatibleInput, CorruptFile, UnsafeFile, TooLarge: as `read_inputs`, and for a
            folder or zip without images, or images for a model that takes no images.
    """
    if isinstance(source, np.ndarray):
        return from_batch(InputBatch.from_arrays(source, spec, name=filename or "array"), spec, filename or "array")
    if isinstance(source, (list, tuple)) and not _is_named_bytes(source):
        return _image_files([_named(s) for s in source], spec, filename or "images")
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        root = Path(source)
        paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        files = [(p.relative_to(root).as_posix(), _path_reader(p)) for p in paths]
        return _image_files(files, spec, filename or root.name, empty=f"{root.name} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    data, name = read_bytes(source, filename)
    if data[:2] == b"PK" and _is_image_zip(data, name):
        return _image_zip(data, name, spec)
    return from_batch(read_inputs(data, spec, filename=name), spec, name)


# --------------------------------------------------------------------------
# images, decoded per shard
# --------------------------------------------------------------------------
def _is_named_bytes(source: Sequence) -> bool:
    return len(source) == 2 and isinstance(source[0], str) and isinstance(source[1], (bytes, bytearray, memoryview))


def _named(item: Any) -> tuple[str, Callable[[], bytes]]:
    if isinstance(item, (list, tuple)) and _is_named_bytes(item):
        name, data = item
        return str(name), lambda: bytes(data)
    if isinstance(item, (str, os.PathLike)):
        return Path(item).name, _path_reader(Path(item))
    raise IncompatibleInput(f"A dataset list holds image files (paths or (name, bytes)), not a {type(item).__name__}.")


def _path_reader(path: Path) -> Callable[[], bytes]:
    return lambda: read_source(path)[0]


def _image_files(files: list[tuple[str, Callable[[], bytes]]], spec: InputSpec, name: str, empty: str | None = None) -> Dataset:
    if not files:
        raise IncompatibleInput(empty or f"{name} holds no images.")
    if spec.modality != "image":
        raise IncompatibleInput(f"{name} holds images, but this model takes {spec.modality} inputs.")
    names = [n for n, _ in files]
    readers = [r for _, r in files]

    def read(start: int, stop: int) -> np.ndarray:
        return np.concatenate([read_image(readers[i](), spec, names[i]).array for i in range(start, stop)])

    return Dataset(name, spec, names, _folder_labels(names, spec), read)


def _folder_labels(names: list[str], spec: InputSpec) -> np.ndarray | None:
    """Labels from class-named parent folders (``cat/1.png``), when every image has one."""
    classes = {c: k for k, c in enumerate(spec.class_names)}
    parents = [Path(n).parent.name for n in names]
    if not classes or not all(p in classes for p in parents):
        return None
    return np.asarray([classes[p] for p in parents], np.int64)


def _is_image_zip(data: bytes, name: str) -> bool:
    """True for a zip whose members are images (an ``.npz`` holds ``.npy`` members)."""
    with open_zip(data, name, config.max_upload_bytes() * 4, MAX_DATASET_ZIP_ENTRIES) as zf:
        members = [i.filename for i in zf.infolist() if not i.is_dir()]
    return bool(members) and not all(m.endswith(".npy") for m in members) and any(
        m.lower().endswith(IMAGE_SUFFIXES) for m in members)


def _image_zip(data: bytes, name: str, spec: InputSpec) -> Dataset:
    zf = open_zip(data, name, config.max_upload_bytes() * 4, MAX_DATASET_ZIP_ENTRIES)
    members = sorted(i.filename for i in zf.infolist()
                     if not i.is_dir() and i.filename.lower().endswith(IMAGE_SUFFIXES)
                     and not Path(i.filename).name.startswith("."))  # no __MACOSX/._ resource forks
    files = [(m, (lambda m=m: read_zip_member(zf, m, name))) for m in members]
    return _image_files(files, spec, name)
