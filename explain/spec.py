"""What a model expects as input: modality, shape, normalisation, names.

A spec travels with a model as JSON: inside a safetensors header's metadata
(key ``glassbox.spec``), as an extra file ``glassbox_spec.json`` in a
TorchScript or ``.pt2`` archive, or as a separate uploaded ``.json`` file.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from explain.errors import IncompatibleInput

Modality = Literal["image", "tabular", "text"]
MODALITIES: tuple[str, ...] = ("image", "tabular", "text")
SPEC_FILENAME = "glassbox_spec.json"


@dataclass
class InputSpec:
    """How to feed a model.

    Attributes:
        modality: ``image`` | ``tabular`` | ``text``.
        input_shape: one sample's shape without the batch dimension:
            ``(C, H, W)`` for images, ``(F,)`` for tabular, ``(L,)`` for text.
        dtype: ``float32`` for image and tabular, ``int64`` for text token ids.
        mean, std: normalisation applied by preprocessing (per channel for
            images on [0, 1] pixels, per feature for tabular). ``None``: the
            inputs are used as they are.
        class_names: one name per output logit.
        feature_names: tabular column names, in model order.
        vocabulary: text tokens; index = token id. By convention id 0 is
            ``<pad>`` and id 1 is ``<unk>``; ``cls_token`` is prepended when set.
        cls_token: a token put in front of every text (e.g. ``<cls>``) or None.
        lowercase: lower-case text before tokenising.
        name: a display name for the model.
    """

    modality: str
    input_shape: tuple[int, ...]
    dtype: str = "float32"
    mean: list[float] | None = None
    std: list[float] | None = None
    class_names: list[str] = field(default_factory=list)
    feature_names: list[str] | None = None
    vocabulary: list[str] | None = None
    cls_token: str | None = None
    lowercase: bool = True
    name: str = "model"

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise IncompatibleInput(
                f"Unknown modality {self.modality!r}.", f"Use one of {', '.join(MODALITIES)}."
            )
        self.input_shape = tuple(int(d) for d in self.input_shape)

    # -- serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

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
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_name(self, index: int) -> str:
        if 0 <= index < len(self.class_names):
            return self.class_names[index]
        return f"class {index}"


def infer_spec(sample: np.ndarray, name: str = "model") -> InputSpec:
    """Guess a spec from a model-ready array (batch first).

    float N×C×H×W → image, float N×F → tabular, integer N×L → text token ids.
    """
    arr = np.asarray(sample)
    if np.issubdtype(arr.dtype, np.integer) and arr.ndim == 2:
        return InputSpec("text", (arr.shape[1],), dtype="int64", name=name)
    if np.issubdtype(arr.dtype, np.floating) and arr.ndim == 4:
        return InputSpec("image", tuple(arr.shape[1:]), name=name)
    if np.issubdtype(arr.dtype, np.floating) and arr.ndim == 2:
        return InputSpec("tabular", (arr.shape[1],), name=name)
    raise IncompatibleInput(
        f"Cannot infer the modality of an array of shape {arr.shape} and dtype {arr.dtype}.",
        "Expected float N×C×H×W (image), float N×F (tabular) or integer N×L (text), "
        "or upload a spec JSON.",
    )
