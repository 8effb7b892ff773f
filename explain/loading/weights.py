"""Weight-only formats: safetensors, state_dicts, checkpoint dicts (and trusted pickles).

A weight file holds tensors, not code. The model is rebuilt from a registered
architecture (`explain.loading.architectures`) and the weights are loaded strictly:
every key present with the right shape, or the file is refused. Untrusted
pickles are only ever read with ``torch.load(weights_only=True)``. The file's
config is sized before the architecture is built: a model needing more
parameters than the file's tensors hold, or over the operator's caps, is
refused without building it (`architectures.check_size`).
"""
from __future__ import annotations

import io
import json
import math
import pickle
from typing import Any

import torch
from torch import nn

from explain.errors import CorruptFile, IncompatibleInput, TooLarge, UnsafeFile, one_line
from explain.loading import architectures
from explain.loading.source import LoadedParts, spec_from_any, weights_only_load

#: Checkpoint-dict keys that hold the model weights, in the order tried.
STATE_KEYS = ("state_dict", "model_state_dict", "model")
#: Checkpoint-dict keys copied into `LoadedModel.extra` when present.
EXTRA_KEYS = ("epoch", "history", "global_step", "step", "best_metric")
#: Key prefixes stripped when the weights fit only without them (Lightning, DataParallel).
STRIPPABLE_PREFIXES = ("model.", "module.")
_SHOW = 5  # keys named in a mismatch message
#: Largest safetensors header (JSON) read; real ones are kilobytes per thousand tensors.
MAX_SAFETENSORS_HEADER = 16 * 2**20

#: The ways out for weights Glassbox cannot rebuild: a file that carries the model's code.
NO_ARCHITECTURE_HINT = (
    "Save it with its code, as TorchScript or torch.export .pt2 (torch.jit.script(model).save(path), "
    "torch.export.save), or upload a Hugging Face folder or zip."
)
#: The longest refusal of a weights file (reason and hint): the command line prints it whole on one line.
MAX_MESSAGE = 300
_EVIDENCE_KEY = 40  # characters of a tensor name quoted as evidence


class WeightsRefused(IncompatibleInput):
    """Weights that cannot become a model: no architecture Glassbox knows (or the named one) fits them.

    A spec cannot help here (it says how to feed a model, not how to build one), so a page
    offers no spec form for it; the hint names the formats that carry the model's code.
    """


# --------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------
def read_safetensors(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and ``__metadata__`` of a safetensors file (no code involved).

    Raises:
        CorruptFile: a malformed header or truncated data.
    """
    from safetensors.torch import load as load_safetensors

    n = int.from_bytes(data[:8], "little")
    if n > MAX_SAFETENSORS_HEADER:
        raise TooLarge(f"The safetensors header is {n / 2**20:.0f} MiB, over the "
                       f"{MAX_SAFETENSORS_HEADER / 2**20:.0f} MiB Glassbox reads.")
    try:
        header = json.loads(data[8 : 8 + n])
        tensors = load_safetensors(data)
    except Exception as exc:  # safetensors raises its own error types
        raise CorruptFile(
            f"The safetensors file is truncated or damaged ({one_line(exc, 200, typed=False)}).",
            "Upload the complete file again.",
        ) from None
    metadata = (header.get("__metadata__") if isinstance(header, dict) else None) or {}
    if isinstance(header, dict):  # in the header's order: safetensors' own dict order changes from run to run
        tensors = {k: tensors[k] for k in header if k in tensors} | tensors
    return tensors, {str(k): str(v) for k, v in metadata.items()}


#: bits per value of each safetensors dtype (`safetensors_shapes` checks each tensor's bytes with them)
SAFETENSORS_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6,
                    "F6_E3M2": 6, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
                    "I64": 64, "U64": 64, "F64": 64, "C64": 64}


def safetensors_header_bytes(head: bytes) -> int:
    """How many bytes a safetensors file's header takes, its 8-byte length included, from its first 8 bytes.

    Raises:
        TooLarge: a header over `MAX_SAFETENSORS_HEADER`.
    """
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if n > MAX_SAFETENSORS_HEADER:
        raise TooLarge(f"The safetensors header is {n / 2**20:.0f} MiB, over the "
                       f"{MAX_SAFETENSORS_HEADER / 2**20:.0f} MiB Glassbox reads.")
    return 8 + n


def safetensors_shapes(data: bytes, size: int | None = None) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape in a safetensors file, from its header alone (no tensor is read). ``size``: the
    whole file's bytes when ``data`` is only its head (`safetensors_header_bytes`); each tensor's dtype and
    offsets are then checked to hold its shape's values within them, so the shapes count values that are there.

    Raises:
        TooLarge: a header over `MAX_SAFETENSORS_HEADER`.
        CorruptFile: a header that is not a safetensors table, or (``size``) a tensor past the file's bytes.
    """
    end = safetensors_header_bytes(data)
    try:
        header = json.loads(data[8:end])
        table = {str(k): v for k, v in header.items() if k != "__metadata__"}
        shapes = {k: tuple(_whole(d) for d in v["shape"]) for k, v in table.items()}
        if size is not None:
            spans = []
            for name, entry in table.items():
                begin, stop = (_whole(o) for o in entry["data_offsets"])
                values = math.prod(shapes[name])
                if not begin <= stop <= size - end or (
                        stop - begin) != -(-values * SAFETENSORS_BITS[entry["dtype"]] // 8):  # whole bytes
                    raise ValueError(name)
                if stop > begin:  # an empty tensor holds no bytes to share
                    spans.append((begin, stop))
            spans.sort()  # tensors sharing bytes would count them twice (safetensors itself refuses them)
            if any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])):
                raise ValueError("overlapping tensors")
        return shapes
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError, RecursionError):  # deep nesting
        raise CorruptFile("The safetensors file is truncated or damaged (its header is not a tensor table"
                          f"{' of the bytes it holds' if size is not None else ''}).",
                          "Upload the complete file again.") from None


def _whole(value: Any) -> int:
    """A header's size or offset: a JSON whole number of at least 0 (not 2.7, "5", true or 1e400)."""
    if type(value) is not int or value < 0:
        raise ValueError(value)
    return value


def load_safetensors_parts(data: bytes) -> LoadedParts:
    """Build the model a safetensors file describes (or the one its weights fit)."""
    tensors, metadata = read_safetensors(data)
    config = _config_from(metadata.get("glassbox.config"))
    module, arch = fit_state_dict(tensors, metadata.get("glassbox.architecture"), config, what="a safetensors file")
    spec = spec_from_any(metadata.get("glassbox.spec"))
    return LoadedParts(module, "safetensors", embedded_spec=spec, architecture=arch)


def _config_from(value: Any) -> dict[str, Any] | None:
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        return value
    try:
        config = json.loads(value)
    except (TypeError, ValueError) as exc:
        raise IncompatibleInput(f"The architecture config is not valid JSON ({exc}).") from None
    if not isinstance(config, dict):
        raise IncompatibleInput("The architecture config must be a JSON object.")
    return config


# --------------------------------------------------------------------------
# torch.save pickles
# --------------------------------------------------------------------------
def load_pickle_parts(data: bytes, kind: str, trusted: bool) -> LoadedParts:
    """A ``torch.save`` file (zip or legacy) or, in trusted mode, a bare pickle.

    Args:
        data: the file bytes.
        kind: ``"torch"`` (zip), ``"legacy"`` (pre-1.6 torch.save) or
            ``"pickle"`` (a bare Python pickle).
        trusted: allow full unpickling (the operator's own files only).
    """
    what = {"torch": "PyTorch file", "legacy": "legacy PyTorch file", "pickle": "pickle file"}[kind]
    if not trusted:
        if kind == "pickle":
            raise UnsafeFile(
                "This is a plain Python pickle; unpickling it can run arbitrary code, "
                "so Glassbox refuses it.",
                "Upload safetensors, a weights-only torch.save(model.state_dict()) file, "
                "TorchScript or a torch.export .pt2 file.",
            )
        obj = weights_only_load(data, what)
    else:
        obj = _trusted_load(data, kind, what)
    return parts_from_object(obj, trusted)


def _trusted_load(data: bytes, kind: str, what: str) -> Any:
    try:
        if kind == "pickle":
            return pickle.loads(data)  # trusted mode only: the operator's own file
        return torch.load(io.BytesIO(data), weights_only=False, map_location="cpu")
    except Exception as exc:
        raise CorruptFile(f"The {what} cannot be loaded even in trusted mode ({one_line(exc, 200, typed=False)}).") from None


def parts_from_object(obj: Any, trusted: bool) -> LoadedParts:
    """Turn what a pickle held into a model: a module, a state_dict or a checkpoint dict."""
    if isinstance(obj, nn.Module):
        if not trusted:  # weights_only cannot produce one; keep the rule explicit
            raise UnsafeFile("Whole pickled modules are only loaded in trusted mode.")
        return LoadedParts(obj, "pickle")
    if not isinstance(obj, dict):
        raise WeightsRefused(
            f"The file holds a {type(obj).__name__}, not a model, state_dict or checkpoint dict.",
            NO_ARCHITECTURE_HINT,
        )
    if is_tensor_dict(obj):
        module, arch = fit_state_dict(obj, None, None)
        return LoadedParts(module, "state_dict", architecture=arch)
    return _checkpoint_parts(obj, trusted)


def _checkpoint_parts(ckpt: dict[str, Any], trusted: bool) -> LoadedParts:
    state_key = next((k for k in STATE_KEYS if k in ckpt), None)
    if state_key is None:
        shown = ", ".join(map(str, list(ckpt)[:8]))
        raise WeightsRefused(
            f"The dict in this file is neither a state_dict nor a checkpoint (keys: {shown}).",
            f"A checkpoint keeps its weights under one of {', '.join(STATE_KEYS)}.",
        )
    extra = {k: ckpt[k] for k in EXTRA_KEYS if k in ckpt}
    spec = spec_from_any(ckpt.get("spec"))
    state = ckpt[state_key]
    if isinstance(state, nn.Module) and trusted:
        return LoadedParts(state, "pickle", embedded_spec=spec, extra=extra)
    if not is_tensor_dict(state):
        raise WeightsRefused(f"The checkpoint's {state_key!r} entry is not a dict of tensors.", NO_ARCHITECTURE_HINT)
    arch = ckpt.get("architecture")
    if arch is not None and not isinstance(arch, str):
        raise IncompatibleInput("The checkpoint's 'architecture' entry must be a name (a string).")
    module, arch = fit_state_dict(state, arch, _config_from(ckpt.get("config")),
                                  what="a checkpoint with a state dict")
    return LoadedParts(module, "checkpoint", embedded_spec=spec, architecture=arch, extra=extra)


def is_tensor_dict(obj: Any) -> bool:
    """True for a non-empty dict whose keys are strings and values tensors."""
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


# --------------------------------------------------------------------------
# fitting weights to an architecture
# --------------------------------------------------------------------------
def fit_state_dict(
    state: dict[str, torch.Tensor], architecture: str | None, config: dict[str, Any] | None,
    *, what: str = "a state dict",
) -> tuple[nn.Module, str]:
    """Build an architecture and load ``state`` into it strictly.

    With ``architecture`` None, every registered architecture's default
    config is tried and the first whose keys and shapes all match wins. Keys
    and shapes are compared before anything is copied, so a refused file never
    leaves a half-loaded model behind. A named architecture's config (the file's)
    is sized first: one over the caps, or needing more parameters than
    ``state`` holds, is refused without being built.

    Args:
        what: what the file is, for the refusal (``a state dict``, ``a safetensors file``, ...).

    Returns:
        (eval-mode module, architecture name).

    Raises:
        WeightsRefused: the weights fit no candidate. Unnamed: one line saying what the file is
            (tensor count, a few names as evidence) and the formats that carry the code
            (`unknown_weights_message`); named: the first missing / unexpected / mis-shaped keys.
        TooLarge: the named architecture's config is over a cap (or, as
            IncompatibleInput, needs more parameters than ``state`` holds).
    """
    if architecture:
        candidates = [(architecture, config)]
    else:
        candidates = [(name, None) for name in architectures.list_architectures()]
    problems: list[str] = []
    same_names: tuple[str, str] | None = None  # (architecture, first mis-shaped key): named alike, sized otherwise
    available = sum(t.numel() for t in state.values())
    for name, cfg in candidates:  # a guess tries the registered (trusted) default configs as they are
        module = architectures.build_architecture(name, cfg, available=available if architecture else None)
        expected = module.state_dict()
        best = None
        for variant in key_variants(state):
            problem = describe_mismatch(expected, variant)
            if problem is None:
                module.load_state_dict(variant, strict=True)
                return module.eval(), name
            best = best or problem
            if same_names is None and set(variant) == set(expected):
                key = next(k for k, v in expected.items() if tuple(variant[k].shape) != tuple(v.shape))
                same_names = (name, f"{_elide(key)}: file {list(variant[key].shape)}, {name} {list(expected[key].shape)}")
        problems.append(f"{name}: {best}")
    if architecture:
        raise WeightsRefused(
            f"The weights do not fit architecture {architecture!r} ({problems[0].split(': ', 1)[1]}).",
            "Check the architecture name and config stored with the weights.",
        )
    raise WeightsRefused(*unknown_weights_message(state, what, same_names))


def unknown_weights_message(state: dict[str, Any], what: str = "a state dict",
                            same_names: tuple[str, str] | None = None) -> tuple[str, str]:
    """The one refusal of weights no registered architecture fits: (reason, hint), at most `MAX_MESSAGE` long.

    The reason says what the file is, with a few tensor names as evidence (never the key dump of
    every architecture tried); the hint names the formats that carry the model's code.

    Args:
        state: the file's tensors by name.
        what: what the file is (``a state dict``, ``a safetensors file``, ...).
        same_names: (architecture, first difference) when the names are those of a registered
            architecture and only the sizes differ: then its config is what is missing.
    """
    n = len(state)
    count = f"{n:,} tensor{'' if n == 1 else 's'}"
    if same_names is not None:
        name, difference = same_names
        return (f"The file is {what} of {count} named as in architecture {name!r} but sized otherwise ({difference}).",
                "Store the architecture's config with the weights (glassbox.config metadata or a 'config' "
                "checkpoint entry), or save the model as TorchScript or torch.export .pt2.")
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    keys = sorted(state, key=lambda k: k.endswith(buffers))  # weights before buffers, in file order

    def reason(shown: int, longest: int = _EVIDENCE_KEY) -> str:
        listed = ", ".join(_elide(k, longest) for k in keys[:shown]) + (", …" if n > shown else "")
        return f"The file is {what} of {count} ({listed}) that fit none of the registered architectures."

    def fits(text: str) -> bool:
        return len(f"{text} {NO_ARCHITECTURE_HINT}") <= MAX_MESSAGE

    shown = 1  # one name as evidence, up to three while the line stays whole
    while shown < min(n, 3) and fits(reason(shown + 1)):
        shown += 1
    longest = _EVIDENCE_KEY
    while longest > 8 and not fits(reason(shown, longest)):  # a very long name: elided further
        longest -= 4
    return reason(shown, longest), NO_ARCHITECTURE_HINT


def _elide(key: str, longest: int = _EVIDENCE_KEY) -> str:
    return key if len(key) <= longest else key[: longest - 1] + "…"


def key_variants(state: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """``state`` as it is, then its keys under each wrapper prefix with the prefix stripped
    (`STRIPPABLE_PREFIXES`: Lightning's ``model.``, DataParallel's ``module.``): the ways its names may fit."""
    variants = [state]
    for prefix in STRIPPABLE_PREFIXES:
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if stripped:
            variants.append(stripped)
    return variants


def describe_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str | None:
    """None when ``given`` has exactly ``expected``'s keys and shapes, else a short reason."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} (file {list(given[k].shape)}, model {list(v.shape)})"
        for k, v in expected.items()
        if k in given and tuple(given[k].shape) != tuple(v.shape)
    ]
    parts = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes)):
        if keys:
            more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
            parts.append(f"{label}: {', '.join(keys[:_SHOW])}{more}")
    return "; ".join(parts) or None
