"""Static check of a TorchScript archive before ``torch.jit.load`` ever sees it.

``torch.jit.load`` compiles the archive's ``code/**/*.py`` and runs some of it
while loading (a scripted ``__setstate__``); the forward pass runs the rest.
TorchScript can call any registered operator, and some touch files
(``torch.from_file(path, shared=True)`` maps a file writable). So Glassbox
reads the archive with ``zipfile`` and, for every entry (duplicates and any
case of ``.py`` included, since torch's zip reader may pick either):

- parses each code file with Python's ``ast`` (TorchScript's serialized code
  is a Python subset), after refusing what the two lexers could read
  differently (non-ASCII, control characters, line continuations, prefixed or
  triple-quoted strings, unusual number literals), and resolves every name as
  TorchScript's importer does (`explain.loading.script_code`): operators must be on the
  shared allowlist, ``__setstate__`` / ``__getstate__`` are refused;
- scans each pickle (``data.pkl``, ``constants.pkl``, debug info) with
  ``pickletools.genops``, never unpickling: its globals must be archive
  classes or torch's tensor-rebuild helpers. A pickle is scanned as a stream
  from the archive (never read whole, never listed), at most `MAX_PICKLE_BYTES`
  and `explain.config.max_pickle_opcodes` opcodes of it.

An archive without code, or with code that does not parse, is `CorruptFile`.
"""
from __future__ import annotations

import ast
import io
import pickletools
import re
import tokenize
import zipfile
from typing import IO

from explain import config
from explain.errors import CorruptFile, TooLarge, UnsafeFile
from explain.loading.script_code import HINT, CodeChecker, refuse_missing

#: Most code (all ``.py`` entries, uncompressed) an archive may carry; real models carry kilobytes.
MAX_CODE_BYTES = 64 * 2**20
#: Largest pickle member scanned (tensors live in separate records; real pickles are kilobytes).
MAX_PICKLE_BYTES = 64 * 2**20
_NUMBER = re.compile(r"^(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?j?$")
_SAFE_GLOBALS = {
    "torch._utils": {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_qtensor", "_rebuild_parameter"},
    "torch.jit._pickle": {"build_intlist", "build_tensorlist", "build_doublelist", "build_boollist",
                          "build_tensor_from_id", "restore_type_tag"},
    "collections": {"OrderedDict"},
    "builtins": {"complex"},
    "torch": {"device", "per_tensor_affine", "per_channel_affine", "per_tensor_symmetric", "per_channel_symmetric",
              "per_channel_affine_float_qparams"},
}
_STORAGE = re.compile(r"^(Bool|Byte|Char|Short|Int|Long|Half|Float|Double|BFloat16|ComplexFloat|ComplexDouble|"
                      r"QInt8|QUInt8|QInt32|QUInt4x2|QUInt2x4)Storage$")


def check_torchscript_archive(source: zipfile.ZipFile | bytes) -> None:
    """Refuse a TorchScript archive whose code or pickles reach beyond tensor operators.

    Args:
        source: the archive, open or as bytes.

    Raises:
        UnsafeFile: the archive calls an operator outside the allowlist, uses
            a forbidden name or construct, defines ``__setstate__`` or pickles
            a global other than archive classes and tensor helpers; the
            message names it.
        CorruptFile: no code, code that does not parse, unreadable members.
        TooLarge: more than `MAX_CODE_BYTES` of code, a pickle over `MAX_PICKLE_BYTES`
            or over `explain.config.max_pickle_opcodes` opcodes.
    """
    zf = source if isinstance(source, zipfile.ZipFile) else _open(source)
    code: list[tuple[str, ast.Module]] = []
    pickles = []
    size = sum(i.file_size for i in zf.infolist() if i.filename.lower().endswith(".py"))
    if size > MAX_CODE_BYTES:
        raise TooLarge(f"The TorchScript file carries {size / 2**20:.0f} MiB of code, over the "
                       f"{MAX_CODE_BYTES / 2**20:.0f} MiB Glassbox checks.", HINT)
    for info in zf.infolist():  # every entry, duplicates included: torch may read either
        lower = info.filename.lower()
        if lower.split("/")[1:2] == ["extra"]:  # <root>/extra/*: the user's extra files, never run
            continue
        if lower.endswith(".py"):
            code.append((info.filename, _parse(info.filename, _read(zf, info))))
        elif lower.endswith(".pkl"):
            if info.file_size > MAX_PICKLE_BYTES:  # the stated size: zipfile never reads past it
                raise TooLarge(f"The TorchScript file's {_short(info.filename)} is a "
                               f"{info.file_size / 2**20:.0f} MiB pickle, over the "
                               f"{MAX_PICKLE_BYTES / 2**20:.0f} MiB Glassbox scans.", HINT)
            pickles.append(info)
    if not any("/code/" in "/" + name.lower() for name, _ in code):
        raise CorruptFile("The TorchScript file cannot be loaded (it holds no code/ directory).", HINT)
    defined, members = _definitions(code)
    loader_hooks: list[tuple[CodeChecker, ast.FunctionDef]] = []
    checkers = []
    for name, tree in code:
        checker = CodeChecker(_short(name), defined, members)
        checker.check(tree)
        checkers.append(checker)
        loader_hooks += [(checker, node) for node in checker.loader_hooks]
    refuse_missing(checkers)  # every operator off the allowlist, named in one refusal
    for checker, node in loader_hooks:  # after the operators: a payload there is named by its operator
        checker.refuse(node, f"defines {node.name}, which torch.jit.load would run while loading")
    for info in pickles:
        try:
            stream = zf.open(info)
        except Exception as exc:
            raise CorruptFile(f"The TorchScript archive is truncated or damaged ({exc}).") from None
        with stream:
            check_pickle_globals(stream, _short(info.filename), defined)


def check_pickle_globals(data: bytes | IO[bytes], where: str, defined: frozenset[str] = frozenset()) -> None:
    """Refuse a pickle naming any global but archive classes and tensor-rebuild helpers.

    The opcodes are read one at a time from a stream (never listed), at most
    `MAX_PICKLE_BYTES` of it and `explain.config.max_pickle_opcodes` opcodes.

    Args:
        data: the pickle bytes or a binary stream of them (only scanned, never unpickled).
        where: the member name for messages.
        defined: qualified names of the classes the archive's code defines.

    Raises:
        UnsafeFile: a forbidden opcode or global, named.
        CorruptFile: not a valid pickle (or a damaged member).
        TooLarge: over the byte or opcode cap.
    """
    for opcode, arg in _opcodes(data, where):
        if opcode.name in ("STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"):
            raise UnsafeFile(f"The TorchScript file's {where} uses the pickle opcode {opcode.name}, "
                             "which TorchScript archives never need.", HINT)
        if opcode.name != "GLOBAL":
            continue
        module, _, name = str(arg).partition(" ")
        if module == "__torch__" or module.startswith("__torch__."):
            if f"{module}.{name}" in defined and not module.startswith("__torch__.torch.classes"):
                continue
        elif name in _SAFE_GLOBALS.get(module, ()) or (module == "torch" and _STORAGE.match(name)):
            continue
        raise UnsafeFile(f"The TorchScript file's {where} references {module}.{name}, which is neither a class "
                         "of the archive nor a tensor helper; Glassbox does not load it.", HINT)


def _opcodes(data: bytes | IO[bytes], where: str):
    """``(opcode, arg)`` of a pickle, streamed and capped (`check_pickle_globals`)."""
    limit = config.max_pickle_opcodes()
    stream = _CappedReader(io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data,
                           MAX_PICKLE_BYTES, where)
    count = 0
    try:
        for opcode, arg, _ in pickletools.genops(stream):
            count += 1
            if count > limit:
                raise TooLarge(f"The TorchScript file's {where} has more than {limit:,} pickle opcodes, "
                               "over what Glassbox scans.", "An operator can raise it with GLASSBOX_MAX_PICKLE_OPCODES.")
            yield opcode, arg
    except (TooLarge, UnsafeFile):
        raise
    except Exception as exc:
        raise CorruptFile(f"The TorchScript file cannot be loaded ({where} is not a valid pickle: {exc}).") from None


class _CappedReader:
    """A binary stream that refuses to hand out more than ``cap`` bytes (before reading them)."""

    def __init__(self, stream: IO[bytes], cap: int, where: str):
        self._stream, self._left, self._where = stream, cap, where

    def _take(self, n: int) -> int:
        if n is None or n < 0 or n > self._left:
            raise TooLarge(f"The TorchScript file's {self._where} is a pickle over the "
                           f"{MAX_PICKLE_BYTES / 2**20:.0f} MiB Glassbox scans.", HINT)
        return n

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(self._take(n))
        self._left -= len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        line = self._stream.readline(self._left + 1)  # a line over the cap fails below
        self._take(len(line))
        self._left -= len(line)
        return line


# --------------------------------------------------------------------------
# reading and parsing
# --------------------------------------------------------------------------
def _open(data: bytes) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CorruptFile(f"The TorchScript archive is truncated or damaged ({exc}).") from None


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        return zf.read(info)
    except Exception as exc:
        raise CorruptFile(f"The TorchScript archive is truncated or damaged ({exc}).") from None


def _short(name: str) -> str:
    """``archive/code/__torch__/x.py`` -> ``code/__torch__/x.py`` for messages."""
    index = name.lower().find("code/")
    return name[index:] if index >= 0 else name


def _parse(name: str, raw: bytes) -> ast.Module:
    """Parse one code file, refusing anything the Python and TorchScript lexers could read differently."""
    where = _short(name)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise UnsafeFile(f"The TorchScript file's {where} holds non-ASCII bytes; Glassbox does not check such code.",
                         HINT) from None
    bad = re.search(r"[^\n\x20-\x7e]|\\\n", text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        raise UnsafeFile(f"The TorchScript file's {where} has a control character or line continuation "
                         f"(line {line}); Glassbox does not check such code.", HINT)
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.STRING and (tok.string[0] not in "'\"" or tok.string[:3] in ('"""', "'''")):
                raise UnsafeFile(f"The TorchScript file's {where} has a string literal Glassbox does not accept "
                                 f"(line {tok.start[0]}: {tok.string[:20]!r}).", HINT)
            if tok.type == tokenize.NUMBER and not _NUMBER.match(tok.string):
                raise UnsafeFile(f"The TorchScript file's {where} has a number literal Glassbox does not accept "
                                 f"(line {tok.start[0]}: {tok.string[:20]!r}).", HINT)
        return ast.parse(text, filename=where)
    except (SyntaxError, tokenize.TokenError, ValueError, RecursionError, MemoryError) as exc:
        raise CorruptFile(f"The TorchScript file cannot be loaded ({where} does not parse: {exc}).", HINT) from None


def _definitions(code: list[tuple[str, ast.Module]]) -> tuple[frozenset[str], frozenset[str]]:
    """What the archive defines.

    Returns:
        The qualified names (``__torch__.a.b.C``) of every top-level class and
        function, and the names of every attribute and method its classes
        declare (``weight``, ``mode``, ``_conv_forward``, ``"0"``).
    """
    names, members = set(), set()
    for path, tree in code:
        index = ("/" + path.lower()).find("/code/")
        if index < 0:
            continue
        qualifier = path[index + len("code/"):-len(".py")].replace("/", ".")
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                names.add(f"{qualifier}.{node.name}")
            for item in node.body if isinstance(node, ast.ClassDef) else ():
                targets = item.targets if isinstance(item, ast.Assign) else [getattr(item, "target", None)]
                for target in targets:
                    if isinstance(target, ast.Name):
                        members.add(target.id)
                    elif isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant):
                        members.add(str(target.slice.value))
                if isinstance(item, ast.FunctionDef):
                    members.add(item.name)
    return frozenset(names), frozenset(members)
