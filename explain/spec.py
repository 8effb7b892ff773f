"""What a model expects as input: modality, shape, normalisation, names.

A spec travels with a model as JSON: inside a safetensors header's metadata
(key ``glassbox.spec``), as an extra file ``glassbox_spec.json`` in a
TorchScript or ``.pt2`` archive, or as a separate uploaded ``.json`` file.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from explain.errors import IncompatibleInput, UnsafeFile

Modality = Literal["image", "tabular", "text"]
MODALITIES: tuple[str, ...] = ("image", "tabular", "text")
#: What a model does with its input: ``classification`` (logits [N, K] over its classes) or
#: ``causal_lm`` (a decoder that predicts the next token: explained by `explain.generation`).
TASKS: tuple[str, ...] = ("classification", "causal_lm")
#: The one line a classifier's view or method gives a causal LM instead of its result.
CAUSAL_LM_NOTE = ("This is a causal language model; the classifier views and methods cannot show it. "
                  "Explain what it generates on the Generate page or with `python -m explain generate` "
                  "(or logit-lens, attention --prompts).")
SPEC_FILENAME = "glassbox_spec.json"
#: the inputs array of a saved run (`explain.workspace.runs`) holding the run's spec: its JSON as UTF-8 bytes
#: (uint8), stored once per distinct inputs blob (a Hugging Face tokenizer in it can be megabytes: not in the
#: row's JSON); here, so that a first view (`explain.report.first_view`) reads it without the workspace
SPEC_KEY = "spec_json"


@dataclass
class InputSpec:
    """How to feed a model.

    Attributes:
        modality: ``image`` | ``tabular`` | ``text``.
        input_shape: one sample's shape without the batch dimension:
            ``(C, H, W)`` for images, ``(F,)`` for tabular, ``(L,)`` for text.
        dtype: ``float32`` for image and tabular, ``int64`` for text token ids;
            left out, it follows the modality (text always takes integer ids).
        mean, std: normalisation applied by preprocessing (per channel for
            images on [0, 1] pixels, per feature for tabular). ``None``: the
            inputs are used as they are.
        class_names: one name per output logit.
        feature_names: tabular column names, in model order.
        vocabulary: text tokens; index = token id. By convention id 0 is
            ``<pad>`` and id 1 is ``<unk>``; ``cls_token`` is prepended when set.
        cls_token: a token put in front of every text (e.g. ``<cls>``) or None.
        lowercase: lower-case text before tokenising.
        tokenizer: a Hugging Face ``tokenizer.json`` (its text). When set, texts are
            tokenised by it, the model's own tokenizer (BPE, WordPiece, Unigram, with
            its special tokens), instead of by ``vocabulary`` alone.
        resize: images: the shorter side is resized to this many pixels, then the centre
            H x W is cropped (``256`` for a 224 x 224 ImageNet model); ``None`` stretches
            the whole picture to H x W.
        image_processor: images: a Hugging Face ``preprocessor_config.json`` (checked by
            `check_processor_config`). When set, pictures go through transformers' own image
            processor for it (`explain.inputs.images`) instead of ``resize`` / ``mean`` / ``std``.
        name: a display name for the model.
        task: one of `TASKS`; a ``causal_lm`` (text only) has no class names, its outputs
            are next-token logits over its vocabulary.
        chat_template: a causal LM's chat template (the Jinja text of its
            ``tokenizer_config.json``), kept as data; never run here.
    """

    modality: str
    input_shape: tuple[int, ...]
    dtype: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    class_names: list[str] = field(default_factory=list)
    feature_names: list[str] | None = None
    vocabulary: list[str] | None = None
    cls_token: str | None = None
    lowercase: bool = True
    tokenizer: str | None = None
    resize: int | None = None
    image_processor: dict[str, Any] | None = None
    name: str = "model"
    task: str = "classification"
    chat_template: str | None = None

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise IncompatibleInput(
                f"Unknown modality {self.modality!r}.", f"Use one of {', '.join(MODALITIES)}."
            )
        if self.task not in TASKS or (self.task == "causal_lm" and self.modality != "text"):
            raise IncompatibleInput(f"Unknown task {self.task!r} for a {self.modality} model.",
                                    "Use classification, or causal_lm for a text model.")
        self.input_shape = _check_shape(self.modality, self.input_shape)
        self.dtype = _check_dtype(self.modality, self.dtype)
        if self.modality == "image":
            _check_image_fields(self)


    # -- serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        for optional in ("tokenizer", "resize", "image_processor", "chat_template"):  # specs without them stay as they were
            if d[optional] is None:
                del d[optional]
        if d["task"] == "classification":
            del d["task"]
        return d

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        if not isinstance(data, dict) or "modality" not in data or "input_shape" not in data:
            raise IncompatibleInput(
                "The spec is not a Glassbox spec.",
                "It must be a JSON object with at least 'modality' and 'input_shape'.",
            )
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str | bytes) -> InputSpec:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise IncompatibleInput(f"The spec is not valid JSON ({exc}).") from None
        return cls.from_dict(data)

    # -- helpers ---------------------------------------------------------
    @property
    def is_causal_lm(self) -> bool:
        """True for a causal language model (next-token logits, explained by `explain.generation`)."""
        return self.task == "causal_lm"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_name(self, index: int) -> str:
        if 0 <= index < len(self.class_names):
            return self.class_names[index]
        return f"class {index}"


def _check_shape(modality: str, shape: Any) -> tuple[int, ...]:
    """One sample's shape as ints: C×H×W for images, one dim for tabular and text, every dim > 0."""
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise IncompatibleInput(f"The spec's input_shape {shape!r} is not a list of sizes.",
                                "Write it like [3, 32, 32] (image), [30] (tabular) or [64] (text).") from None
    want = _RANKS[modality]
    if len(dims) != want or any(d <= 0 for d in dims):
        raise IncompatibleInput(
            f"{'An' if modality == 'image' else 'A'} {modality} spec needs input_shape {_RANK_TEXT[modality]} (one sample, no batch dim), "
            f"got {list(dims)}.",
        )
    return dims


def _check_dtype(modality: str, dtype: str | None) -> str:
    """The spec's dtype, normalised; text is always integer token ids."""
    if dtype is None:
        return "int64" if modality == "text" else "float32"
    name = _DTYPE_ALIASES.get(str(dtype).lower().removeprefix("torch.").removeprefix("numpy."), None)
    if name is None:
        raise IncompatibleInput(f"Unknown spec dtype {dtype!r}.", "Use float32 (image, tabular) or int64 (text).")
    if modality == "text" and not name.startswith("int"):
        raise IncompatibleInput(
            f"A text spec feeds integer token ids, but its dtype is {name}.",
            'Leave "dtype" out or write "dtype": "int64".',
        )
    return name


#: The largest size (pixels, any side) an image spec or a preprocessor config may ask for.
MAX_SIDE = 4096
#: preprocessor config keys whose numbers are not sizes (every other number must be <= MAX_SIDE).
_NOT_SIZES = {"rescale_factor", "image_mean", "image_std", "crop_pct"}


def _check_image_fields(spec: InputSpec) -> None:
    """An image spec's preprocessing fields: mean / std one per channel (or one), std non-zero, sizes bounded."""
    c = spec.input_shape[0]
    for field_name in ("mean", "std"):
        values = getattr(spec, field_name)
        if values is None:
            continue
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise IncompatibleInput(f"The spec's {field_name} {values!r} is not a list of numbers.") from None
        if len(values) not in (1, c) or not all(np.isfinite(values)):
            raise IncompatibleInput(f"The spec's {field_name} has {len(values)} values for {c} channels.",
                                    f"Give one {field_name} per channel, e.g. 0.485, 0.456, 0.406.")
        setattr(spec, field_name, values * c if len(values) == 1 else values)
    if (spec.mean is None) != (spec.std is None):
        raise IncompatibleInput("The spec gives a mean without a std (or a std without a mean).",
                                "Give both, one per channel, or neither.")
    if spec.std is not None and any(v == 0 for v in spec.std):
        raise IncompatibleInput("The spec's std has a zero; inputs would be divided by zero.")
    if spec.resize is not None:
        if isinstance(spec.resize, bool) or not isinstance(spec.resize, int) or not 0 < spec.resize <= MAX_SIDE:
            raise IncompatibleInput(f"The spec's resize {spec.resize!r} is not a size in pixels (1..{MAX_SIDE}).")
    if spec.image_processor is not None:
        check_processor_config(spec.image_processor)


def check_processor_config(cfg: Any, where: str = "preprocessor_config.json") -> None:
    """A Hugging Face image processor config, as data: an object, no remote code, every size bounded.

    Raises:
        UnsafeFile: it asks for remote code (``auto_map``).
        IncompatibleInput: not an object, or a size over `MAX_SIDE`.
    """
    if not isinstance(cfg, dict):
        raise IncompatibleInput(f"{where} is not a JSON object.")
    if "auto_map" in cfg:
        raise UnsafeFile(f"{where} asks for remote code (auto_map); Glassbox never runs code that comes with a model.")
    _check_sizes(cfg, where)


def _check_sizes(value: Any, where: str, key: str = "") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _check_sizes(v, where, str(k))
    elif isinstance(value, list):
        if len(value) > 16:
            raise IncompatibleInput(f"{where} has a list of {len(value)} values under {key!r}.")
        for v in value:
            _check_sizes(v, where, key)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and key not in _NOT_SIZES:
        if not np.isfinite(value) or abs(value) > MAX_SIDE:
            raise IncompatibleInput(f"{where} sets {key} to {value}, over the {MAX_SIDE}-pixel limit.")


_RANKS = {"image": 3, "tabular": 1, "text": 1}
_RANK_TEXT = {"image": "[C, H, W]", "tabular": "[F] (features)", "text": "[L] (tokens)"}
_DTYPE_ALIASES = {
    **{n: n for n in ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8")},
    "float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int32",
}


# --------------------------------------------------------------------------
# a spec from what is at hand: a graph's signature, sample inputs, a form
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class SpecGuess:
    """What is known of a model's input when it carries no spec (the spec form starts from it).

    Attributes:
        input_shape: one sample's shape; None marks a dynamic (or unknown) dim.
        dtype: the element type (``float32``, ``int64``...) or None.
        source: where it was read, for messages ("the .pt2 signature", "the first layer").
        modality: the modality the shape and dtype imply, or None.
    """

    input_shape: tuple[int | None, ...] | None = None
    dtype: str | None = None
    source: str = "nothing"
    modality: str | None = None

    @property
    def dynamic_dims(self) -> list[int]:
        """Positions (0 = the first per-sample dim) whose size the source leaves open."""
        return [i for i, d in enumerate(self.input_shape or ()) if d is None]

    def shape_text(self) -> str:
        """``[*, 3, 32, 32]``-style: the batch dim first, ``*`` for every open dim."""
        return "[" + ", ".join(["*", *("*" if d is None else str(d) for d in self.input_shape or ())]) + "]"


class SpecNeeded(IncompatibleInput):
    """The model carries no spec and nothing at hand tells one; ``guess`` holds what is known."""

    def __init__(self, reason: str, hint: str | None = None, guess: SpecGuess | None = None):
        super().__init__(reason, hint)
        self.guess = guess or SpecGuess()


def modality_for(ndim: int, dtype: str) -> str | None:
    """float C×H×W → image, float F → tabular, integer L → text (per sample); else None."""
    kind = str(dtype).lower().removeprefix("torch.")
    integer = kind.startswith(("int", "uint", "long"))
    floating = kind.startswith(("float", "double", "half", "bfloat"))
    if integer and ndim == 1:
        return "text"
    if floating and ndim == 3:
        return "image"
    if floating and ndim == 1:
        return "tabular"
    return None


def spec_from_guess(guess: SpecGuess, name: str = "model") -> InputSpec:
    """The spec a complete guess implies (every dim known, a modality).

    Raises:
        SpecNeeded: a dim is dynamic or the shape and dtype fit no modality; says which.
    """
    shape = guess.input_shape
    if shape is None or guess.dtype is None:
        raise SpecNeeded(f"{guess.source} tells no input shape.", guess=guess)
    if guess.modality is None:
        raise SpecNeeded(f"{guess.source} takes {guess.dtype} inputs {guess.shape_text()}, which fit no modality "
                         "(float N×C×H×W image, float N×F tabular, integer N×L text).", guess=guess)
    if guess.dynamic_dims:
        dims = ", ".join(str(i + 1) for i in guess.dynamic_dims)
        raise SpecNeeded(f"{guess.source} leaves dim {dims} of {guess.shape_text()} open "
                         f"({guess.modality} inputs; dim 0 is the batch).", guess=guess)
    return InputSpec(guess.modality, tuple(int(d) for d in shape), dtype="int64" if guess.modality == "text" else
                     "float32", name=name)


def guess_from_array(sample: np.ndarray, source: str = "the inputs") -> SpecGuess:
    """What a model-ready, batch-first array says about the input."""
    arr = np.asarray(sample)
    shape = tuple(int(d) for d in arr.shape[1:]) if arr.ndim >= 1 else ()
    return SpecGuess(shape, str(arr.dtype), source, modality_for(len(shape), str(arr.dtype)))


def infer_spec(sample: np.ndarray, name: str = "model") -> InputSpec:
    """Guess a spec from a model-ready array (batch first).

    float N×C×H×W → image, float N×F → tabular, integer N×L → text token ids.
    """
    arr = np.asarray(sample)
    guess = guess_from_array(arr)
    if arr.ndim < 2 or guess.modality is None:
        raise IncompatibleInput(
            f"Cannot infer the modality of an array of shape {arr.shape} and dtype {arr.dtype}.",
            "Expected float N×C×H×W (image), float N×F (tabular) or integer N×L (text), "
            "or give a spec JSON.",
        )
    return spec_from_guess(guess, name)


# -- the spec form's text fields ---------------------------------------------------
def parse_shape(text: str) -> tuple[int, ...]:
    """``"3, 32, 32"``, ``"3x32x32"`` or ``"[3, 32, 32]"`` → (3, 32, 32).

    Raises:
        IncompatibleInput: an empty shape, ``?`` / ``*`` left in, or not a whole number.
    """
    parts = [p for p in re.split(r"[\s,x×\[\]()]+", str(text).strip().lower()) if p]
    if "?" in str(text) or "*" in str(text) or not parts:
        raise IncompatibleInput(f"The input shape {str(text).strip()!r} is not complete.",
                                "Give every size of one sample, e.g. 3, 32, 32 (image) or 30 (tabular).")
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise IncompatibleInput(f"The input shape {str(text).strip()!r} is not a list of whole numbers.",
                                "Write it like 3, 32, 32.") from None


def parse_names(text: str) -> list[str]:
    """Names one per line, or comma-separated on one line; blanks dropped."""
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    if len(lines) == 1 and "," in lines[0]:
        lines = [p.strip() for p in lines[0].split(",") if p.strip()]
    return lines


def parse_numbers(text: str | None, name: str = "values") -> list[float] | None:
    """``"0.485, 0.456, 0.406"`` (commas or spaces) → [0.485, 0.456, 0.406]; blank → None.

    Raises:
        IncompatibleInput: an entry that is not a number.
    """
    parts = [p for p in re.split(r"[\s,;\[\]()]+", str(text or "").strip()) if p]
    if not parts:
        return None
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise IncompatibleInput(f"The {name} {str(text).strip()!r} is not a list of numbers.",
                                "Write one number per channel, e.g. 0.485, 0.456, 0.406.") from None


def parse_vocabulary(data: bytes, name: str = "vocabulary") -> list[str]:
    """A vocabulary file: a JSON list of tokens, a JSON {token: id} object, or one token per line.

    Raises:
        IncompatibleInput: empty, unreadable, or ids that do not run 0..n-1.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise IncompatibleInput(f"{name} is not UTF-8 text.", "Upload one token per line, or a JSON list.") from None
    tokens: list[str]
    if text.lstrip().startswith(("[", "{")):
        try:
            data_json = json.loads(text)
        except ValueError as exc:
            raise IncompatibleInput(f"{name} is not valid JSON ({exc}).") from None
        if isinstance(data_json, dict):
            ids = sorted((int(v), str(k)) for k, v in data_json.items() if isinstance(v, int))
            if [i for i, _ in ids] != list(range(len(data_json))):
                raise IncompatibleInput(f"{name} maps tokens to ids that do not run 0..{len(data_json) - 1}.")
            tokens = [t for _, t in ids]
        elif isinstance(data_json, list):
            tokens = [str(t) for t in data_json]
        else:
            raise IncompatibleInput(f"{name} is neither a JSON list nor a JSON object of tokens.")
    else:
        tokens = [line.rstrip("\r") for line in text.split("\n")]
        while tokens and not tokens[-1]:
            tokens.pop()
    if not tokens:
        raise IncompatibleInput(f"{name} holds no tokens.")
    return tokens


def build_spec(
    modality: str,
    input_shape: str | tuple[int, ...],
    class_names: str | list[str] = "",
    feature_names: str | list[str] | None = None,
    vocabulary: list[str] | None = None,
    name: str = "model",
    mean: str | list[float] | None = None,
    std: str | list[float] | None = None,
    resize: int | None = None,
) -> InputSpec:
    """A spec from the spec form's fields (text fields parsed with `parse_shape` / `parse_names` /
    `parse_numbers`); ``mean`` / ``std`` / ``resize`` are kept for images only.

    Raises:
        IncompatibleInput: a field that does not fit the others, with what to change.
    """
    shape = parse_shape(input_shape) if isinstance(input_shape, str) else tuple(input_shape)
    classes = parse_names(class_names) if isinstance(class_names, str) else list(class_names)
    features = parse_names(feature_names) if isinstance(feature_names, str) else feature_names
    image = modality == "image"
    means = parse_numbers(mean, "mean") if isinstance(mean, str) else mean
    stds = parse_numbers(std, "std") if isinstance(std, str) else std
    spec = InputSpec(modality, shape, class_names=classes, name=name or "model",
                     feature_names=(features or None) if modality == "tabular" else None,
                     vocabulary=(vocabulary or None) if modality == "text" else None,
                     mean=(means or None) if image else None, std=(stds or None) if image else None,
                     resize=(int(resize) if resize else None) if image else None)
    if len(set(classes)) != len(classes):
        raise IncompatibleInput("The class names repeat a name.", "Give each output logit its own name.")
    if spec.feature_names and len(spec.feature_names) != shape[0]:
        raise IncompatibleInput(f"{len(spec.feature_names)} feature names for {shape[0]} features.",
                                "Give one name per feature, in model order, or none.")
    return spec
