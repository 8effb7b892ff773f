"""`load_model`: the one way a model file becomes a `LoadedModel`.

Files are data, never code. The real format is sniffed from the bytes (the
extension is only a hint), the size is capped (`explain.config`), and each
format has its own safe path:

========================  ===============================================
safetensors               weights + ``glassbox.*`` metadata, rebuilt from a
                          registered architecture (`weights`)
state_dict / checkpoint   ``torch.load(weights_only=True)`` only
TorchScript               statically checked, vetted in the sandbox (`torchscript`),
                          then loaded and run only in its model process
torch.export ``.pt2``     hardened reader, no pickle fallback (`export`),
                          vetted in the sandbox (`vetting`), loaded and run
                          only in its model process (`model_process`)
Hugging Face folder/zip   config.json + safetensors (or weights-only .bin),
                          built-in model types only, no remote code (`huggingface`)
full pickles              refused unless trusted mode is on
========================  ===============================================

Spec resolution (`resolve_spec`), the one order every CLI subcommand and page
uses: the explicit ``spec`` argument, else the spec embedded in the file, else
for a ``.pt2`` the input shape and dtype of the exported program's signature
(when no dim but the batch is dynamic), else one inferred from ``sample_input``
(float N×C×H×W image, float N×F tabular, integer N×L text), else `SpecNeeded`
saying what to give. ``LoadedModel.extra["spec_source"]`` records which one won.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from explain import config
from explain.digest import digest_array, digest_bytes
from explain.errors import CorruptFile, GlassboxError, IncompatibleInput, TooLarge, one_line
from explain.inputs.text import check_tokenizer_size
from explain.loading import huggingface
from explain.loading.export import (
    archive_tokenizer,
    check_export_parts,
    check_program_fits,
    check_spec_fits,
    is_export_archive,
    signature_guess,
)
from explain.loading.export_lm import causal_spec
from explain.loading.source import (
    LEGACY_TORCH_MAGIC,
    Archive,
    LoadedParts,
    describe_content,
    find_member,
    open_archive,
    read_source,
)
from explain.loading.torchscript import is_torchscript, load_torchscript_parts
from explain.loading.vetting import VettingMemory, vet_graph
from explain.loading.weights import load_pickle_parts, load_safetensors_parts
from explain.model import LoadedModel
from explain.spec import InputSpec, SpecGuess, SpecNeeded, guess_from_array, infer_spec, spec_from_guess

#: What `sniff_format` can answer.
KINDS = ("safetensors", "torchscript", "export", "huggingface", "torch", "legacy", "pickle")
_UPLOAD_HINT = "Upload safetensors, a torch.save'd state_dict or checkpoint (.pt/.pth/.ckpt), TorchScript or a torch.export .pt2 file."


def load_model(
    source: str | os.PathLike | bytes | Any,
    spec: InputSpec | dict | str | os.PathLike | None = None,
    *,
    filename: str | None = None,
    trusted: bool | None = None,
    device: str | torch.device = "cpu",
    sample_input: np.ndarray | None = None,
    vetted: VettingMemory | None = None,
) -> LoadedModel:
    """Load a model file safely and describe how to feed it.

    Args:
        source: a path, the file's bytes (an upload) or a binary file object.
        spec: an `InputSpec`, a dict, JSON text or a path to a JSON file; it
            wins over the spec embedded in the file.
        filename: the upload's name (its extension is a hint for messages).
        trusted: allow full pickles (the operator's own files); None reads
            ``GLASSBOX_TRUSTED`` (`explain.config.trusted_mode`).
        device: where the returned model lives.
        sample_input: a model-ready batch to infer the spec from when neither
            ``spec`` nor the file gives one.
        vetted: where vetting outcomes outlive this process (the workspace's
            ``ws.vetting``): a graph vetted there before, for this torch version
            and these settings, is not vetted again. None: vetted once per process.

    Returns:
        An eval-mode `LoadedModel` (``requires_grad`` of parameters untouched).

    Raises:
        TooLarge, CorruptFile, UnsafeFile, IncompatibleInput: with a one-line
            reason and what to upload instead.
    """
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():  # a Hugging Face folder
        data, name = huggingface.folder_as_zip(source)
    else:
        data, name = read_source(source, filename, default_name="upload", empty_hint=_UPLOAD_HINT)
    digest = digest_bytes(data)
    tokenizer = given_tokenizer(spec)  # a causal .pt2's tokenizer.json, given where a spec goes
    explicit = coerce_spec(spec) if tokenizer is None else None
    trusted = config.trusted_mode() if trusted is None else bool(trusted)
    archive = open_archive(data, "zip") if data[:2] == b"PK" else None  # opened once: sniffer and reader share it
    kind = sniff_format(data, name, archive=archive)
    key = _refusal_key(kind, digest, explicit, sample_input, trusted, tokenizer)
    remembered = _REFUSED.get(key) if key else None
    if remembered is not None:  # a user's model refused before: never run it again for the same answer
        raise remembered.__class__(remembered.reason, remembered.hint) if not isinstance(remembered, SpecNeeded) \
            else SpecNeeded(remembered.reason, remembered.hint, remembered.guess)
    try:
        return _load_kind(kind, data, name, digest, explicit, trusted, archive, sample_input, device, vetted,
                          beside=source if isinstance(source, (str, os.PathLike)) else None, tokenizer=tokenizer)
    except GlassboxError as exc:
        if key and not any(word in exc.reason for word in ("busy", "did not start")):
            _remember_refusal(key, exc)
        raise


def _load_kind(kind: str, data: bytes, name: str, digest: str, explicit: InputSpec | None, trusted: bool,
               archive: Any, sample_input: Any, device: Any, vetted: VettingMemory | None = None,
               beside: str | os.PathLike | None = None, tokenizer: str | None = None) -> LoadedModel:
    if tokenizer is not None and kind != "export":  # only a .pt2 may be a causal LM without a spec of its own
        raise _not_a_spec(name)
    parts = _load_parts(kind, data, explicit, trusted, archive, vetted)
    info = parts.process.info if parts.process is not None else {}
    if parts.process is not None:  # what the graph's own process read of it
        signature = guess_from_info(info.get("signature"))
    else:
        signature = signature_guess(parts.exported_program) if parts.exported_program is not None else None
    if info.get("causal_lm") and explicit is None and parts.embedded_spec is None:  # a .pt2 causal LM
        given = tokenizer if tokenizer is not None else _pt2_tokenizer(archive, beside)
        final, spec_source = causal_spec(info["causal_lm"], given, Path(name).stem), "signature"
    elif tokenizer is not None:
        raise _not_a_spec(name)
    else:
        final, spec_source = resolve_spec(
            explicit, parts.embedded_spec, sample_input, Path(name).stem, signature=signature,
            module_guess=lambda: guess_from_info(info.get("module_guess")) if parts.process is not None
            else guess_from_module(parts.module),
        )
    if parts.exported_program is not None:
        check_spec_fits(parts.exported_program, final)
    elif parts.process is not None and parts.format == "export":
        check_program_fits(parts, final)
    vetting = vet_graph(parts, data, final, vetted)  # a user's graph: every batch size first runs in the sandbox
    final = check_forward(parts, final)
    model = LoadedModel(
        module=parts.module,
        format=parts.format,
        sha256=digest,
        spec=final,
        name=final.name if final.name != "model" else Path(name).stem or "model",
        architecture=parts.architecture,
        fixed_batch_size=parts.fixed_batch_size,
        exported_program=parts.exported_program,
        max_batch_rows=vetting.max_batch_rows if vetting else None,
        process=parts.process,
        extra={**parts.extra, "spec_source": spec_source,
               **({"signature": describe_guess(signature)} if signature is not None else {}),
               **({"sandbox": vetting.summary()} if vetting else {})},
    )
    return model.to(device)


def _not_a_spec(name: str) -> IncompatibleInput:
    return IncompatibleInput(f"The spec given for {name} is a tokenizer.json, which only a causal-LM .pt2 without "
                             "a spec of its own takes as its spec.", SPEC_NEEDED_HINT)


#: Refusals of a user's model (TorchScript, ``.pt2``, Hugging Face) kept per process, keyed by the bytes'
#: sha256, the spec, the sample inputs and the limits: a page rerun does not run a refused model again.
REFUSED_CACHE_SIZE = 128
_REFUSED: dict[tuple, GlassboxError] = {}


def _refusal_key(kind: str, digest: str, explicit: InputSpec | None, sample_input: Any, trusted: bool,
                 tokenizer: str | None = None) -> tuple | None:
    if kind not in ("torchscript", "export", "huggingface"):
        return None
    sample = None if sample_input is None else digest_array(np.asarray(sample_input))
    limits = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("GLASSBOX_")))  # every cap
    given = None if tokenizer is None else digest_bytes(tokenizer.encode())
    return (digest, None if explicit is None else explicit.to_json(), sample, trusted, limits, given)


def _remember_refusal(key: tuple, exc: GlassboxError) -> None:
    while len(_REFUSED) >= REFUSED_CACHE_SIZE:
        _REFUSED.pop(next(iter(_REFUSED)), None)
    _REFUSED[key] = exc


# --------------------------------------------------------------------------
# reading and sniffing
# --------------------------------------------------------------------------
def sniff_format(data: bytes, name: str = "upload", *, archive: Archive | None = None) -> str:
    """Tell the real format from the bytes; one of `KINDS` (``archive``: the zip ``data`` is, already open).

    Raises:
        CorruptFile: empty, text, images, arrays, truncated or unknown files,
            with a message saying what the file looks like instead.
    """
    ext = Path(name).suffix.lower()
    named = f"{name} (named {ext})" if ext else name
    if not data:
        raise CorruptFile(f"{name} is empty (0 bytes).", _UPLOAD_HINT)
    if data[:2] == b"PK":
        return _sniff_zip(archive or open_archive(data, "zip"), named)
    if _looks_like_safetensors(data):
        return "safetensors"
    if data.startswith(LEGACY_TORCH_MAGIC):
        return "legacy"
    if data[:1] == b"\x80" and len(data) > 1 and 2 <= data[1] <= 5:
        return "pickle"
    what = describe_content(data)
    if what is not None:
        hint = {"a NumPy array": "Upload it as inputs instead.", "an image": "Upload it as inputs instead.",
                "a Glassbox spec (JSON)": "Upload it as the spec."}.get(what, _UPLOAD_HINT)
        raise CorruptFile(f"{named} is {what}, not a model.", hint)
    if ext in (".safetensors", ".st") and len(data) >= 8:
        raise CorruptFile(f"{named} has no valid safetensors header (truncated or damaged).", _UPLOAD_HINT)
    raise CorruptFile(f"{named} is not a model format Glassbox recognises.", _UPLOAD_HINT)


def _sniff_zip(archive: Archive, named: str) -> str:
    names = archive.names
    if is_torchscript(names):
        return "torchscript"
    if is_export_archive(archive, names):
        return "export"
    if huggingface.is_hf_archive(names):
        return "huggingface"
    if find_member(names, "data.pkl") is not None:
        return "torch"
    if find_member(names, "serialized_exported_program.json") is not None:
        raise CorruptFile(
            f"{named} is a .pt2 in the pre-2.7 torch.export format, which Glassbox does not read.",
            "Export the model again with torch.export.save.",
        )
    if names and all(n.endswith(".npy") for n in names):
        raise CorruptFile(f"{named} is a NumPy .npz archive, not a model.", "Upload it as inputs instead.")
    raise CorruptFile(f"{named} is a zip archive but not a PyTorch model.", _UPLOAD_HINT)


def _looks_like_safetensors(data: bytes) -> bool:
    if len(data) < 10:
        return False
    n = int.from_bytes(data[:8], "little")
    return 2 <= n <= len(data) - 8 and data[8:9] == b"{"


def _pt2_tokenizer(archive: Archive | None, path: str | os.PathLike | None) -> str | None:
    """A causal ``.pt2``'s ``tokenizer.json``: the one it carries (``extra/tokenizer.json``), else the file beside
    the ``.pt2`` on disk (as a Hugging Face folder keeps it beside the weights), else None."""
    found = archive_tokenizer(archive) if archive is not None else None
    beside = Path(path).with_name("tokenizer.json") if path is not None else None
    if found is None and beside is not None and beside.is_file():
        with open(beside, "rb") as fh:
            raw = fh.read(config.max_tokenizer_bytes() + 1)  # no more than the cap is ever read
        check_tokenizer_size(raw)
        found = raw.decode("utf-8", errors="replace")
    return found


# --------------------------------------------------------------------------
# loading and spec resolution
# --------------------------------------------------------------------------
def _load_parts(kind: str, data: bytes, spec: InputSpec | None, trusted: bool,
                archive: Archive | None = None, vetted: VettingMemory | None = None) -> LoadedParts:
    try:
        if kind == "safetensors":
            return load_safetensors_parts(data)
        if kind == "torchscript":
            return load_torchscript_parts(data, spec, archive, vetted)
        if kind == "export":
            return check_export_parts(data, archive)
        if kind == "huggingface":
            return huggingface.check_huggingface_parts(data, archive)
        return load_pickle_parts(data, kind, trusted)
    except GlassboxError:
        raise
    except MemoryError:
        raise TooLarge("The model needs more memory than is available.") from None
    except Exception as exc:  # any other failure of a third-party reader: the file is bad
        raise CorruptFile(f"The {kind} file cannot be loaded ({one_line(exc, 200)}).") from None


def given_tokenizer(spec: Any) -> str | None:
    """The text of a Hugging Face ``tokenizer.json`` given where a spec goes (the sidebar's Spec upload,
    ``--spec``: what a user has beside a causal-LM ``.pt2``), else None (a spec, or nothing). Size-checked
    before it is parsed; its JSON is told from a Glassbox spec by its tokenizer ``model`` and no ``modality``."""
    if isinstance(spec, (str, os.PathLike)) and not (isinstance(spec, str) and spec.lstrip().startswith("{")):
        path = Path(spec)
        if not path.is_file() or path.stat().st_size > 10 * 2**20:
            return None  # coerce_spec says why
        spec = path.read_bytes()
    if not isinstance(spec, (str, bytes)):
        return None
    try:
        raw = json.loads(spec)
    except (ValueError, RecursionError):
        return None  # coerce_spec says why
    if not isinstance(raw, dict) or "modality" in raw or not isinstance(raw.get("model"), dict) \
            or "type" not in raw["model"] or "added_tokens" not in raw:
        return None
    check_tokenizer_size(spec)
    return spec.decode("utf-8", errors="replace") if isinstance(spec, bytes) else spec


def coerce_spec(spec: Any) -> InputSpec | None:
    """An `InputSpec` from an `InputSpec`, dict, JSON text or JSON file path (None stays None)."""
    if spec is None or isinstance(spec, InputSpec):
        return spec
    if isinstance(spec, dict):
        return InputSpec.from_dict(spec)
    if isinstance(spec, bytes):
        return InputSpec.from_json(spec)
    if isinstance(spec, str) and spec.lstrip().startswith("{"):
        return InputSpec.from_json(spec)
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        if not path.is_file():
            raise IncompatibleInput(f"The spec {str(spec)[:80]!r} is neither JSON nor an existing file.")
        if path.stat().st_size > 10 * 2**20:
            raise TooLarge(f"The spec file {path.name} is over 10 MiB.")
        return InputSpec.from_json(path.read_bytes())
    raise IncompatibleInput(f"Cannot use a {type(spec).__name__} as a spec.")


#: `resolve_spec`'s sources, in the order it tries them.
SPEC_SOURCES = ("explicit", "embedded", "signature", "inputs")
SPEC_NEEDED_HINT = (
    "Give a spec JSON (modality, input_shape, class_names; the page's spec form writes one) or "
    "model-ready inputs (.npy/.npz: float N×C×H×W image, float N×F tabular, integer N×L text token ids)."
)


def resolve_spec(
    explicit: InputSpec | None,
    embedded: InputSpec | None,
    sample_input: Any,
    name: str = "model",
    *,
    signature: SpecGuess | None = None,
    module_guess: Any = None,
) -> tuple[InputSpec, str]:
    """The spec to feed the model with, and where it came from (one of `SPEC_SOURCES`).

    Explicit spec > embedded spec > a ``.pt2`` signature with only the batch
    dim dynamic > inferred from ``sample_input`` > `SpecNeeded`.

    Args:
        signature: what the ``.pt2`` signature says (`export.signature_guess`).
        module_guess: a callable returning a `SpecGuess` from the model's layers;
            only called to prefill the page's spec form when everything else fails.

    Raises:
        SpecNeeded: nothing says how to feed the model, or sample inputs whose shape and
            dtype fit no modality; ``guess`` is the best partial answer.
    """
    name = name or "model"
    if explicit is not None:
        return explicit, "explicit"
    if embedded is not None:
        return embedded, "embedded"
    why = None
    if signature is not None:
        try:
            return spec_from_guess(signature, name), "signature"
        except SpecNeeded as exc:
            why = exc.reason
    if sample_input is not None:
        try:
            return infer_spec(np.asarray(sample_input), name=name), "inputs"
        except IncompatibleInput as exc:  # inputs that fit no modality: the form starts from their shape
            raise SpecNeeded(exc.reason, exc.hint, guess=guess_from_array(sample_input)) from None
    guess = signature or (module_guess() if module_guess is not None else None)
    reason = (f"The model file carries no input spec, and {why[0].lower()}{why[1:]}" if why else
              "The model file carries no input spec, so Glassbox does not know how to feed it.")
    raise SpecNeeded(reason, SPEC_NEEDED_HINT, guess=guess)


def describe_guess(guess: SpecGuess) -> dict[str, Any]:
    """A `SpecGuess` as JSON-ready values: the shape batch first, ``None`` for every dynamic dim."""
    return {"input_shape": [None, *(guess.input_shape or ())], "dtype": guess.dtype,
            "dynamic_dims": [0, *(i + 1 for i in guess.dynamic_dims)], "modality": guess.modality}


def guess_from_info(value: Any) -> SpecGuess | None:
    """A `SpecGuess` from a model process's (checked) report of it."""
    if not isinstance(value, dict):
        return None
    return SpecGuess(tuple(value["input_shape"]), value.get("dtype"), value.get("source") or "the model",
                     value.get("modality"))


def guess_from_module(module: Any) -> SpecGuess | None:
    """A partial guess from the model's layers, to prefill a spec form (never used to load).

    An embedding anywhere → text; else the first Conv2d → image with its
    channels, or the first Linear → tabular with its features.
    """
    try:
        layers = [(getattr(m, "original_name", None) or type(m).__name__, m) for _, m in module.named_modules()]
    except Exception:  # a graph module without named_modules: no guess
        return None
    for kind, _ in layers:
        if kind == "Embedding":
            return SpecGuess((None,), "int64", "the model's embedding layer", "text")
    for kind, m in layers:
        weight = getattr(m, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        if kind == "Conv2d" and weight.dim() == 4:
            return SpecGuess((int(weight.shape[1]), None, None), "float32", "the model's first Conv2d", "image")
        if kind == "Linear" and weight.dim() == 2:
            return SpecGuess((int(weight.shape[1]),), "float32", "the model's first Linear layer", "tabular")
    return None


def check_forward(parts: LoadedParts, spec: InputSpec) -> InputSpec:
    """Run one forward pass on zeros; refuse models that fail or do not return logits [N, K].

    Returns:
        The spec, with ``class_names`` filled in (``class 0``...) when it had none.
    """
    if parts.format != "export":
        parts.module.eval()
    batch = parts.fixed_batch_size or 1
    dtype = torch.int64 if spec.dtype.startswith("int") else torch.float32
    x = torch.zeros((batch, *spec.input_shape), dtype=dtype)  # [B, *input_shape]
    try:
        with torch.no_grad():
            out = parts.module(x)
    except GlassboxError:
        raise
    except Exception as exc:
        text = str(exc).lower()
        if isinstance(exc, MemoryError) or "allocate" in text or "out of memory" in text:
            raise TooLarge(f"The model needs more memory than allowed on an input of shape {list(x.shape)}.",
                           "A model that allocates this much on an ordinary input cannot be explained here.") from None
        raise IncompatibleInput(
            f"The model fails on an input of shape {list(x.shape)} ({one_line(exc, 200)}).",
            "Check the spec's input_shape and dtype.",
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != batch:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise IncompatibleInput(f"The model returns {got}; Glassbox explains models that return logits [N, K].")
    k = int(out.shape[1])
    if spec.is_causal_lm:  # next-token logits over the vocabulary: no class names
        return spec
    if not spec.class_names:
        return dataclasses.replace(spec, class_names=[f"class {i}" for i in range(k)])
    if len(spec.class_names) != k:
        raise IncompatibleInput(
            f"The spec names {len(spec.class_names)} classes but the model returns {k} logits."
        )
    return spec

