"""Pieces shared by the format loaders of `explain.loading.loader`.

`LoadedParts` is what each format loader returns before the spec is resolved;
`open_zip` and `read_zip_member` read archives with Python's ``zipfile``
(bounded, no code) so a loader can look inside before handing a file to torch.
`open_archive` opens an upload's zip once as an `Archive` (members with their
declared and packed sizes, reads capped by the declared size) that the sniffer
and the format's reader share.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from explain import config
from explain.errors import CorruptFile, TooLarge, UnsafeFile, one_line
from explain.spec import InputSpec

#: Largest embedded spec (``glassbox_spec.json``) read from an archive.
MAX_SPEC_BYTES = 10 * 2**20
#: A member `Archive.read` reads (JSON, a tokenizer, weights the server parses) may unpack to at most this many
#: times its packed bytes once over `MAX_INFLATE_FLOOR`: JSON deflates some 3 to 20 times, weights ~1.1, a bomb
#: ~1,000 times, and parsed JSON holds up to ~25 times its bytes (a 4 KB upload must not cost the server gigabytes).
MAX_INFLATE_RATIO = 100
MAX_INFLATE_FLOOR = 2**20
#: Most entries a zip's directory may hold (an upload's, or a ``.bin``'s records): ``zipfile`` builds a
#: ``ZipInfo`` of ~10 times an entry's bytes for each. A Hugging Face folder holds ~10 files and up to 256 shards,
#: a ``.bin`` one record per storage (a 7B Llama: ~300), a TorchScript / ``.pt2`` archive one per constant / weight.
MAX_ZIP_ENTRIES = 10_000
#: A dataset's zip of images holds one entry per image: up to this many (a directory of ~25 MB, ~250 MB parsed).
MAX_DATASET_ZIP_ENTRIES = 100_000
#: Central-directory bytes allowed per entry, on average: its 46-byte record, name and extra fields (real names:
#: ~25 to 60 bytes); with `MAX_ZIP_ENTRIES` it caps the directory ``zipfile`` parses whatever its count claims.
MAX_ZIP_ENTRY_BYTES = 256
#: The magic number legacy (non-zip) ``torch.save`` files start with.
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
WEIGHTS_ONLY_HINT = (
    "Save only the weights (torch.save(model.state_dict(), ...) or safetensors), "
    "or a TorchScript / torch.export .pt2 file. An operator can turn on trusted mode "
    "(GLASSBOX_TRUSTED=1) for their own files."
)


@dataclass
class LoadedParts:
    """A model as one format loader sees it, before the spec is resolved.

    Attributes:
        module: the eval-mode callable model.
        format: one of `explain.model.FORMATS`.
        embedded_spec: the spec the file carries, if any.
        architecture: registered architecture name for weight-only formats.
        fixed_batch_size: the only batch size a static ``.pt2`` accepts.
        exported_program: the ``ExportedProgram`` of a ``.pt2``.
        extra: checkpoint epoch / history and the like.
        vetting: the sandbox's `explain.loading.vetting.GraphProbe` for a user's graph, once run.
        process: the `explain.loading.model_process.ModelProcess` a user's graph runs in
            (``module`` is then its `RemoteModule`).
    """

    module: Any
    format: str
    embedded_spec: InputSpec | None = None
    architecture: str | None = None
    fixed_batch_size: int | None = None
    exported_program: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    vetting: Any = None
    process: Any = None


def read_source(source: Any, filename: str | None = None, *, default_name: str = "upload",
                empty_hint: str | None = None, allow_empty: bool = False) -> tuple[bytes, str]:
    """The bytes and a display name of a file a user gives, size-checked.

    Every user file is read here (models, inputs, training logs, checkpoints, the report's
    sources), so all obey the same upload cap with the same wording.

    Args:
        source: a path, bytes (an upload), a binary file object, or a ``(name, bytes)`` pair.
        filename: the display name (an upload's name); default: the path's or pair's name.
        default_name: the name of nameless bytes.
        empty_hint: the hint of the error for an empty file.
        allow_empty: accept 0 bytes (one file of a folder whose reader reports empty files itself).

    Returns:
        ``(data, name)``.

    Raises:
        TooLarge: over `explain.config.max_upload_mb`.
        CorruptFile: a missing path, a text-mode file object or an empty file.
    """
    limit = config.max_upload_bytes()
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[1], (bytes, bytearray, memoryview)):
        filename, source = filename or str(source[0]), source[1]
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), filename or default_name
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise CorruptFile(f"No such file: {path}.")
        _check_size(path.stat().st_size, limit, path.name)
        data, name = path.read_bytes(), filename or path.name
    elif hasattr(source, "read"):
        name = filename or Path(str(getattr(source, "name", default_name))).name
        data = source.read(limit + 1)
        if isinstance(data, str):
            raise CorruptFile(f"{name} was opened as text; pass the file's bytes.")
    else:
        raise CorruptFile(f"Cannot read a {type(source).__name__}; pass a path, bytes or a binary file.")
    _check_size(len(data), limit, name)
    if not data and not allow_empty:
        raise CorruptFile(f"{name} is empty (0 bytes).", empty_hint)
    return data, name


def read_folder(folder: str | os.PathLike, select: Callable[[Path], bool] | None = None) -> list[tuple[Path, bytes]]:
    """``(path, bytes)`` of every file under ``folder`` (sorted, ``select``-ed), each read with `read_source`."""
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and (select is None or select(p)))
    return [(p, read_source(p, allow_empty=True)[0]) for p in files]


def _check_size(size: int, limit: int, name: str) -> None:
    if size > limit:
        raise TooLarge(
            f"{name} is {size / 2**20:.1f} MiB, over the {limit / 2**20:.0f} MiB limit.",
            "An operator can raise it with GLASSBOX_MAX_UPLOAD_MB.",
        )


def open_zip(data: bytes, what: str, max_unpacked: int, max_entries: int = MAX_ZIP_ENTRIES) -> zipfile.ZipFile:
    """Open ``data`` as a zip, refusing damaged archives and zip bombs.

    Args:
        data: the archive bytes.
        what: the format name for messages (``"TorchScript"``, ...).
        max_unpacked: largest total uncompressed size accepted, in bytes.
        max_entries: most entries its directory may hold (`check_zip_directory`).

    Raises:
        CorruptFile: truncated or damaged archive.
        TooLarge: the members claim more than ``max_unpacked`` bytes, or more than ``max_entries`` entries.
    """
    try:
        check_zip_directory(io.BytesIO(data), f"{what} archive", max_entries)
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as exc:
        raise CorruptFile(
            f"The {what} archive is truncated or damaged ({exc}).",
            "Upload the complete file again.",
        ) from None
    _check_entries(len(infos), f"{what} archive", max_entries)
    total = sum(i.file_size for i in infos)
    if total > max_unpacked:
        raise TooLarge(
            f"The {what} archive unpacks to {total / 2**20:.0f} MiB, over the "
            f"{max_unpacked / 2**20:.0f} MiB limit."
        )
    return zf


def check_zip_directory(file: BinaryIO, what: str, max_entries: int = MAX_ZIP_ENTRIES) -> None:
    """Refuse a zip whose end-of-central-directory record claims more than ``max_entries`` entries, or a directory
    of more than ``max_entries`` x `MAX_ZIP_ENTRY_BYTES` bytes, before ``zipfile`` builds its list: ``zipfile``
    parses the directory's bytes whatever count the record gives, so both bound it. The record is read as
    ``zipfile`` reads it (zip64 included); a file without one is left to ``zipfile`` (``BadZipFile``).

    Raises:
        TooLarge: too many entries, or too large a directory.
    """
    try:
        end = zipfile._EndRecData(file)  # the same numbers ZipFile acts on
    except (OSError, struct.error):
        end = None
    if not end:
        return
    _check_entries(end[zipfile._ECD_ENTRIES_TOTAL], what, max_entries)
    if end[zipfile._ECD_SIZE] > max_entries * MAX_ZIP_ENTRY_BYTES:
        raise TooLarge(f"The {what}'s zip directory is {end[zipfile._ECD_SIZE]:,} bytes, over the "
                       f"{max_entries * MAX_ZIP_ENTRY_BYTES:,} Glassbox reads ({max_entries:,} entries).")


def _check_entries(count: int, what: str, max_entries: int) -> None:
    if count > max_entries:
        raise TooLarge(f"The {what} holds {count:,} zip entries, over the {max_entries:,} Glassbox reads.",
                       "Upload only the files needed (a model's own files; a large dataset in several zips).")


class Archive:
    """One upload's zip, opened once (`open_archive`): the sniffer and the format's reader take it.

    Attributes:
        zf: the open ``ZipFile``.
        what: the format name for messages.
        names: the members, in archive order (duplicates kept).
        sizes: each member's declared (uncompressed) size; ``zipfile`` never reads past it.
        packed: each member's bytes present in the upload (compressed size).
    """

    def __init__(self, zf: zipfile.ZipFile, what: str):
        self.zf, self.what = zf, what
        infos = zf.infolist()
        self.names = [i.filename for i in infos]
        self.sizes = {i.filename: i.file_size for i in infos}  # a duplicate: the last, as zf.read reads
        self.packed = {i.filename: i.compress_size for i in infos}

    def find(self, suffix: str) -> str | None:
        """The member whose path ends with ``/suffix`` (`find_member`)."""
        return find_member(self.names, suffix)

    def read(self, name: str, cap: int | None = None, hint: str | None = None) -> bytes:
        """One member's bytes, after `vet`."""
        self.vet(name, cap, hint)
        return read_zip_member(self.zf, name, self.what)

    def vet(self, name: str, cap: int | None = None, hint: str | None = None) -> None:
        """Refuse a member (`TooLarge`, with ``hint``) whose declared size is over ``cap``, or that unpacks to more
        than `MAX_INFLATE_RATIO` times its packed bytes (over `MAX_INFLATE_FLOOR`): the server parses what it
        reads (JSON, a tokenizer), and a model process reads weights whole."""
        size = self.sizes.get(name, 0)
        if cap is not None and size > cap:
            raise TooLarge(f"The {self.what} archive's {name} is {size / 2**20:.1f} MiB, over the "
                           f"{cap / 2**20:.1f} MiB Glassbox reads of it.", hint)
        packed = self.packed.get(name, 0)
        if size > max(MAX_INFLATE_FLOOR, MAX_INFLATE_RATIO * packed):
            raise TooLarge(f"The {self.what} archive's {name} unpacks to {size / 2**20:.1f} MiB from "
                           f"{packed / 2**10:.0f} KiB, more than {MAX_INFLATE_RATIO} times: compressed like a "
                           "decompression bomb, not like the file it names.",
                           "Zip the model's own files again: a zip tool packs JSON some 3 to 20 times.")

    def head(self, name: str, n: int) -> bytes:
        """A member's first ``n`` bytes (fewer if it is shorter); the rest is never read or inflated."""
        try:
            with self.zf.open(name) as member:
                return member.read(n)
        except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError, RuntimeError) as exc:
            raise CorruptFile(f"The {self.what} archive is damaged: member {name!r} cannot be read ({exc}).") from None

    @contextlib.contextmanager
    def window(self, name: str) -> Iterator[BinaryIO]:
        """A member as a read-only seekable file (after `vet`). A stored member is a view of the upload's own bytes
        (nothing copied; only the pages a reader seeks to are read); a compressed one is inflated once, in chunks,
        into an anonymous temporary file, or memory where none can be written (`_inflated`; a reader seeks back and
        forth: a zip's directory is at its end)."""
        self.vet(name)
        info = self.zf.getinfo(name)
        fp = self.zf.fp
        if info.compress_type != zipfile.ZIP_STORED or not isinstance(fp, io.BytesIO):
            with self._inflated(name) as spool:
                yield spool
            return
        with memoryview(fp.getvalue()) as upload:  # the upload's own bytes (getbuffer would copy them)
            local = bytes(upload[info.header_offset:info.header_offset + zipfile.sizeFileHeader])
            fields = struct.unpack(zipfile.structFileHeader, local) if len(local) == zipfile.sizeFileHeader else ()
            start = info.header_offset + zipfile.sizeFileHeader + (fields[10] + fields[11] if fields else 0)  # name, extra
            if not fields or fields[0] != zipfile.stringFileHeader or start + info.file_size > len(upload):
                raise CorruptFile(f"The {self.what} archive is damaged: member {name!r} lies outside it.")
            with upload[start:start + info.file_size] as view:
                yield io.BufferedReader(_View(view))

    @contextlib.contextmanager
    def _inflated(self, name: str) -> Iterator[BinaryIO]:
        """A compressed member inflated once, in 1 MiB chunks, into an anonymous temporary file; where no file
        can be written (the model process: Landlock, ``RLIMIT_FSIZE`` 0) into memory, as that process reads the
        member whole next anyway (`huggingface.state_dict`)."""
        spool: BinaryIO | None = None
        try:
            spool = tempfile.TemporaryFile()
            self._inflate(name, spool)
        except OSError:  # no temporary file here: the open refused, or a write past RLIMIT_FSIZE (EFBIG)
            if spool is not None:
                spool.close()
            spool = io.BytesIO()
            self._inflate(name, spool)
        with spool:
            yield spool

    def _inflate(self, name: str, spool: BinaryIO) -> None:
        try:
            with self.zf.open(name) as member:
                shutil.copyfileobj(member, spool, 2**20)
        except (zipfile.BadZipFile, ValueError, EOFError, KeyError, RuntimeError) as exc:
            raise CorruptFile(f"The {self.what} archive is damaged: member {name!r} cannot be read ({exc}).") from None
        spool.seek(0)


class _View(io.RawIOBase):
    """Bytes as a read-only seekable raw file, without a copy (`Archive.window`)."""

    def __init__(self, view: memoryview):
        self.view, self.pos = view, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = max(0, (0, self.pos, len(self.view))[whence] + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        chunk = self.view[self.pos:self.pos + len(buffer)]
        buffer[:len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)


def open_archive(data: bytes, what: str, max_unpacked: int | None = None) -> Archive:
    """`open_zip` as an `Archive` (default cap: twice the upload limit, as every model reader uses)."""
    return Archive(open_zip(data, what, config.max_upload_bytes() * 2 if max_unpacked is None else max_unpacked), what)


def read_zip_member(zf: zipfile.ZipFile, name: str, what: str) -> bytes:
    """One member's bytes; a damaged member is a `CorruptFile`."""
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as exc:
        raise CorruptFile(f"The {what} archive is damaged: member {name!r} cannot be read ({exc}).") from None


def find_member(names: list[str], suffix: str) -> str | None:
    """The archive member whose path ends with ``/suffix`` (torch archives have a root folder)."""
    for name in names:
        if name == suffix or name.endswith("/" + suffix):
            return name
    return None


def weights_only_load(data: bytes | BinaryIO, what: str, hint: str | None = None, *, device: str = "cpu") -> Any:
    """``torch.load(weights_only=True, map_location=device)`` with Glassbox errors (``data``: the bytes or
    a seekable file; on ``"meta"`` no record is read, `weights_only_shapes`).

    Raises:
        UnsafeFile: the pickle names a global the safe unpickler refuses
            (a whole module, an arbitrary object, a ``__reduce__`` payload).
        CorruptFile: anything else that stops torch from reading the bytes.
    """
    import pickle

    import torch  # here, not at import: reading a training log must not import torch (the app's first paint)

    file = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    _refuse_compressed_records(file, what)
    try:
        file.seek(0)
        return torch.load(file, weights_only=True, map_location=device)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "GLOBAL" in text or "global" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            culprit = f" ({found.group(1)})" if found else ""
            raise UnsafeFile(
                f"The {what} contains Python objects beyond tensors{culprit}; "
                "loading it would need code execution, so Glassbox refuses it.",
                hint or WEIGHTS_ONLY_HINT,
            ) from None
        raise CorruptFile(f"The {what} cannot be unpickled ({one_line(exc, 200, typed=False)}).") from None
    except (RuntimeError, EOFError, ValueError, OSError, TypeError, AttributeError, IndexError, KeyError,
            AssertionError) as exc:  # AssertionError: torch's meta reader meets records out of order
        raise CorruptFile(
            f"The {what} is truncated or damaged ({one_line(exc, 200, typed=False)}).",
            "Upload the complete file again.",
        ) from None


def weights_only_shapes(file: BinaryIO, what: str, hint: str | None = None) -> tuple[dict[str, tuple[int, ...]], int]:
    """Each tensor's shape in a weights-only torch zip (``file``: seekable), and the values its records hold, its
    tensor data never read: torch's weights-only unpickler reads ``data.pkl`` and puts every storage on the
    ``meta`` device; each tensor is then checked to lie within its storage and each storage within the bytes its
    ``data/`` record declares (`weights_only_load`'s refusals and errors).

    The values are counted per storage, each storage's bytes once (at most its views' values): tied weights
    (an embedding and its LM head, one storage) count once, as the model's own ``parameters()`` count them,
    and 400 views of one storage do not count 400 times its values.

    Returns:
        (each tensor's shape, the values held).

    Raises:
        CorruptFile: not a state dict of tensors, or a tensor past its record's bytes.
    """
    import torch

    file.seek(0)
    if file.read(4) != b"PK\x03\x04":  # a legacy torch.save file has no records to check the storages against
        raise CorruptFile(f"The {what} is not a torch zip file (torch.save's format since torch 1.6).",
                          "Save the state_dict again with a current torch, or as model.safetensors.")
    state = weights_only_load(file, what, hint, device="meta")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptFile(f"The {what} is not a state_dict of tensors.")
    try:
        records = _data_records(file)  # a record's data offset -> its declared bytes
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as exc:
        raise CorruptFile(f"The {what} is damaged ({one_line(exc, 200, typed=False)}).") from None
    held_by: dict[Any, list[int]] = {}  # a storage's record -> [its bytes, its views' bytes, element size]
    for name, tensor in state.items():
        if tensor.layout != torch.strided:  # a sparse tensor has no one storage to check (NotImplementedError)
            raise CorruptFile(f"The {what}'s tensor {str(name)[:80]!r} is {tensor.layout}, not dense.",
                              "Save the model's state_dict of dense tensors.")
        storage = tensor.untyped_storage()
        reach = tensor.storage_offset() + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride())) + 1
        need = reach * tensor.element_size() if tensor.numel() else 0
        # more values than its storage holds (stride 0, overlapping strides) would count values that are not there
        need = max(need, tensor.numel() * tensor.element_size())
        held = records.get(getattr(storage, "_checkpoint_offset", None), 0)
        if need > storage.nbytes() or (storage.nbytes() > 0 and storage.nbytes() > held):
            raise CorruptFile(f"The {what}'s tensor {str(name)[:80]!r} claims {max(need, storage.nbytes()):,} bytes; its "
                              f"record holds {held:,}.", "Upload the complete file again.")
        counted = held_by.setdefault(getattr(storage, "_checkpoint_offset", None), [storage.nbytes(), 0, 1])
        counted[1] += tensor.numel() * tensor.element_size()
        counted[2] = tensor.element_size()
    values = sum(min(nbytes, views) // size for nbytes, views, size in held_by.values())
    return {str(k): tuple(v.shape) for k, v in state.items()}, values


def _data_records(file: BinaryIO) -> dict[int, int]:
    """Where each ``data/`` record of a torch zip starts (its local header read) and its declared size."""
    records = {}
    for info in zipfile.ZipFile(file).infolist():
        if "/data/" in info.filename or info.filename.startswith("data/"):
            file.seek(info.header_offset)
            local = file.read(zipfile.sizeFileHeader)
            if len(local) == zipfile.sizeFileHeader:
                fields = struct.unpack(zipfile.structFileHeader, local)
                records[info.header_offset + zipfile.sizeFileHeader + fields[10] + fields[11]] = info.file_size
    return records


def _refuse_compressed_records(file: BinaryIO, what: str) -> None:
    """Refuse a torch zip with a deflated record before torch reads it: torch.save stores its records, but
    torch's reader inflates one, to its declared size (a 1 KB record of zeros asks for 64 MiB or more)."""
    file.seek(0)
    if file.read(2) != b"PK":
        return
    size = file.seek(0, io.SEEK_END)
    check_zip_directory(file, what)  # a .bin's records: one per storage
    try:
        infos = zipfile.ZipFile(file).infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError):
        return  # torch's own reader says what is wrong with it
    _check_entries(len(infos), what, MAX_ZIP_ENTRIES)
    packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED or i.file_size > size]
    if packed:
        raise CorruptFile(f"The {what} has compressed records (e.g. {packed[0][-80:]!r}); torch.save stores them, "
                          "and Glassbox does not inflate them (a small file can unpack to gigabytes).",
                          "Save the weights again with torch.save or as safetensors.")


def more_values_than_bytes(what: str, nbytes: int) -> CorruptFile:
    """The refusal of a file whose ``what`` (its tensors, a history) holds more values than the file has
    bytes: every value stored costs at least one, so more were named again by reference (a pickle's memo,
    many names viewing one storage) or expanded over one stored value (stride 0), which a reader that
    copies or walks them pays for in full (a 2 KB file, gigabytes)."""
    return CorruptFile(f"{what} holds more values than its file has bytes ({nbytes:,}): entries shared or "
                       "expanded, not a saved state.", "Save it again with torch.save (tensors saved whole).")


def describe_content(data: bytes) -> str | None:
    """What a file that is not a torch / zip archive looks like ("a text file", "an image", ...), or None
    when it may be one. The one wording for a wrong file, whichever upload it was given to."""
    if not data:
        return "empty (0 bytes)"
    pickle = len(data) > 1 and data[0] == 0x80 and 2 <= data[1] <= 5
    if data[:2] == b"PK" or data.startswith(LEGACY_TORCH_MAGIC) or pickle:
        return None
    if data.startswith(b"\x93NUMPY"):
        return "a NumPy array"
    if data.startswith((b"\x89PNG", b"\xff\xd8\xff")):
        return "an image"
    text = as_text(data)
    if text is not None:
        if text.lstrip().startswith("{") and '"modality"' in text:
            return "a Glassbox spec (JSON)"
        return "a text file"
    return None


def as_text(data: bytes) -> str | None:
    """The first 4 KiB as text when the file is (almost all) printable UTF-8, else None."""
    head = data[:4096]
    if b"\x00" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        try:  # a multi-byte character cut at the 4 KiB boundary
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return None
    printable = sum(c.isprintable() or c in "\r\n\t" for c in text)
    return text if printable >= 0.95 * max(len(text), 1) else None


def spec_from_text(text: str | bytes | None) -> InputSpec | None:
    """Parse an embedded spec; empty means none, a broken one is reported."""
    if text is None or not text.strip():
        return None
    return InputSpec.from_json(text)


def spec_from_any(value: Any) -> InputSpec | None:
    """An embedded spec that may be a dict, JSON text or an `InputSpec`."""
    if value is None:
        return None
    if isinstance(value, InputSpec):
        return value
    if isinstance(value, dict):
        return InputSpec.from_dict(value)
    if isinstance(value, (str, bytes)):
        return spec_from_text(value)
    return None
