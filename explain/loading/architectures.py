"""A registry of model architectures that weight-only files can be loaded into.

A safetensors file or a ``state_dict`` checkpoint holds weights, not code. To
turn it into a model Glassbox needs the Python class: the file names it
(``glassbox.architecture`` plus a JSON ``glassbox.config``) and this registry
builds it. The registry is open: projects register their own classes with
`register_architecture`. Three sample architectures ship with Glassbox:

- ``shapes_resnet``: small residual CNN for 3x32x32 images (BatchNorm, one
  in-place ReLU module reused within a block, ``out += identity``).
- ``tabular_mlp``: MLP with non-in-place ``nn.ReLU`` modules.
- ``text_transformer``: embedding + learned positions, ``nn.TransformerEncoder``
  layers, classification from the ``<cls>`` position (token 0 of the input).

A config comes from the file, so it is sized before anything is built
(`estimate_size`: parameters, one sample's activations and layers, computed from
the config alone) and refused above the operator's caps
(`explain.config.max_parameters` / ``max_activations`` / ``max_layers``) or, when
weights come with it, above what the weights hold (`check_size`).
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from explain import config as gb_config
from explain.errors import IncompatibleInput, TooLarge

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelSize:
    """What building a config costs, counted before building it.

    Attributes:
        parameters: elements of the state_dict (parameters and buffers).
        activations: elements of one sample's forward pass (every layer's output, summed).
        layers: modules the builder creates.
    """

    parameters: int
    activations: int
    layers: int


#: A size estimator: the merged config's keyword arguments -> `ModelSize`.
Estimator = Callable[..., ModelSize]


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    default_config: dict[str, Any]
    estimate: Estimator | None = None


_REGISTRY: dict[str, _Entry] = {}


def register_architecture(
    name: str, default_config: dict[str, Any] | None = None, estimate: Estimator | None = None
) -> Callable[[Builder], Builder]:
    """Decorator: register an ``nn.Module`` class or a builder under ``name``.

    The decorated callable is called with keyword arguments: the default config
    updated with the config given to `build_architecture`.

    Args:
        name: registry key, stored in weight files as ``glassbox.architecture``.
        default_config: keyword arguments used when none are given.
        estimate: called with the same keyword arguments, returns the `ModelSize`
            building them would cost, without building anything. Without one, a
            config is sized by building it on the ``meta`` device (no tensor
            memory, but the modules are still created).
    """

    def decorate(builder: Builder) -> Builder:
        _REGISTRY[name] = _Entry(builder, dict(default_config or {}), estimate)
        return builder

    return decorate


def list_architectures() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(_REGISTRY)


def default_config(name: str) -> dict[str, Any]:
    """A copy of the default config of architecture ``name``."""
    return copy.deepcopy(_entry(name).default_config)


def build_architecture(
    name: str, config: dict[str, Any] | None = None, *, available: int | None = None
) -> nn.Module:
    """Build a fresh (randomly initialised) model of a registered architecture.

    The config is sized first (`estimate_size`) and refused above the caps, so a
    file's config never makes Glassbox allocate more than the caps allow.

    Args:
        name: a registered architecture name.
        config: keyword arguments overriding the defaults; keys the
            architecture does not know are refused.
        available: the elements the weights to be loaded hold; a config needing
            more parameters is refused (`check_size`).

    Raises:
        IncompatibleInput: unknown name, unknown config key or a config the
            builder rejects.
        TooLarge: a config over a cap.
        IncompatibleInput: a config needing more parameters than ``available``.
    """
    entry, merged = _merged(name, config)
    check_size(name, _estimate(name, entry, merged), available)
    try:
        return entry.builder(**merged)
    except (TypeError, ValueError) as exc:
        raise IncompatibleInput(f"Cannot build architecture {name!r} with this config ({exc}).") from None


def estimate_size(name: str, config: dict[str, Any] | None = None) -> ModelSize:
    """What building ``name`` with ``config`` would cost, computed without building it.

    Raises:
        IncompatibleInput: unknown name or key, or values the estimate cannot read.
    """
    entry, merged = _merged(name, config)
    return _estimate(name, entry, merged)


def check_size(name: str, size: ModelSize, available: int | None = None) -> None:
    """Refuse a model over the operator's caps, or needing more parameters than its weights hold.

    Raises:
        TooLarge: over a cap; the one-line reason names the count, the cap and the setting raising it.
        IncompatibleInput: more parameters than ``available`` (the weights cannot fill the model).
    """
    caps = (("parameters", size.parameters, gb_config.max_parameters(), "GLASSBOX_MAX_PARAMETERS"),
            ("activation elements per sample", size.activations, gb_config.max_activations(),
             "GLASSBOX_MAX_ACTIVATIONS"),
            ("layers", size.layers, gb_config.max_layers(), "GLASSBOX_MAX_LAYERS"))
    for what, count, cap, setting in caps:
        if count > cap:
            raise TooLarge(f"The config of architecture {name!r} asks for {count:,} {what}, over the {cap:,} limit.",
                           f"An operator can raise it with {setting}.")
    if available is not None and size.parameters > available:
        raise IncompatibleInput(f"The weights do not fit architecture {name!r}: its config needs "
                                f"{size.parameters:,} parameters, the weights hold {available:,} values.",
                                "Check the architecture config stored with the weights.")


def _merged(name: str, config: dict[str, Any] | None) -> tuple[_Entry, dict[str, Any]]:
    entry = _entry(name)
    merged = copy.deepcopy(entry.default_config)
    unknown = sorted(set(config or {}) - set(merged))
    if unknown:
        raise IncompatibleInput(
            f"Architecture {name!r} has no config key(s) {', '.join(unknown)}.",
            f"Known keys: {', '.join(sorted(merged)) or 'none'}.",
        )
    merged.update(config or {})
    return entry, merged


def _estimate(name: str, entry: _Entry, merged: dict[str, Any]) -> ModelSize:
    try:
        if entry.estimate is not None:
            return entry.estimate(**merged)
        return _meta_size(entry.builder, merged)
    except (TypeError, ValueError, OverflowError) as exc:
        raise IncompatibleInput(f"Cannot build architecture {name!r} with this config ({exc}).") from None


def _meta_size(builder: Builder, merged: dict[str, Any]) -> ModelSize:
    """A registered class without an estimator: built on the meta device (no tensor memory), counted.

    A builder that cannot run on the meta device (it reads tensor values) is not sized (zeros).
    """
    try:
        with torch.device("meta"):
            module = builder(**merged)
        parameters = sum(t.numel() for t in module.state_dict().values())
    except (TypeError, ValueError):
        raise
    except Exception:
        return ModelSize(0, 0, 0)
    return ModelSize(parameters, 0, sum(1 for _ in module.modules()))


def _ints(values: Any, what: str) -> list[int]:
    """A config list of sizes as positive ints (ValueError names ``what``)."""
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{what} must be a list of sizes")
    return [_int(v, what) for v in values]


def _int(value: Any, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < minimum:
        raise ValueError(f"{what} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise IncompatibleInput(
            f"Unknown architecture {name!r}.",
            f"Registered: {', '.join(list_architectures())}.",
        ) from None


# --------------------------------------------------------------------------
# shapes_resnet
# --------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """ResNet basic block: conv-BN-ReLU-conv-BN, add the shortcut, ReLU.

    One ``nn.ReLU(inplace=True)`` module is used twice, as torchvision does;
    explainers must cope with that (module reuse and in-place ops).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, Cin, H, W] -> [N, Cout, H/s, W/s]
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


#: The input side the ``shapes_resnet`` activation estimate assumes (its sample models' 32x32 images).
RESNET_NOMINAL_SIDE = 32


def _resnet_size(in_channels: Any = 3, num_classes: Any = 4, widths: Any = (16, 32, 64),
                 strides: Any = (2, 2, 1)) -> ModelSize:
    """`ShapesResNet`'s state_dict elements; activations for a `RESNET_NOMINAL_SIDE` square input."""
    c, k = _int(in_channels, "in_channels"), _int(num_classes, "num_classes")
    w, st = _ints(widths, "widths"), _ints(strides, "strides")
    if len(w) != 3 or len(st) != 3:
        raise ValueError("widths and strides must list 3 stages each")
    bn = lambda n: 4 * n + 1  # noqa: E731 - weight, bias, running mean and var, num_batches_tracked
    side = RESNET_NOMINAL_SIDE
    params, acts, layers = c * w[0] * 9 + bn(w[0]) + w[2] * k + k, 3 * w[0] * side * side, 6
    for cin, cout, stride in zip([w[0], w[0], w[1]], w, st):
        params += cin * cout * 9 + cout * cout * 9 + 2 * bn(cout)
        layers += 6
        side = (side - 1) // stride + 1
        acts += 8 * cout * side * side
        if stride != 1 or cin != cout:
            params += cin * cout + bn(cout)
            layers += 3
    return ModelSize(params, acts + w[2] + k, layers)


def _mlp_size(in_features: Any = 30, hidden: Any = (64, 32), num_classes: Any = 2, dropout: Any = 0.1) -> ModelSize:
    """`TabularMLP`'s state_dict elements, activations and layers."""
    width, k = _int(in_features, "in_features"), _int(num_classes, "num_classes")
    params, acts, layers = 0, width, 3
    for h in _ints(hidden, "hidden"):
        params += width * h + h
        acts += 3 * h
        layers += 3
        width = h
    return ModelSize(params + width * k + k, acts + k, layers)


def _transformer_size(vocab_size: Any = 64, max_len: Any = 16, d_model: Any = 32, nhead: Any = 2,
                      num_layers: Any = 2, dim_feedforward: Any = 64, num_classes: Any = 2, **_: Any) -> ModelSize:
    """`TextTransformer`'s state_dict elements; activations for a ``max_len`` sequence."""
    v, n, d = _int(vocab_size, "vocab_size"), _int(max_len, "max_len"), _int(d_model, "d_model")
    h, depth = _int(nhead, "nhead"), _int(num_layers, "num_layers")
    f, k = _int(dim_feedforward, "dim_feedforward"), _int(num_classes, "num_classes")
    per_layer = 4 * d * d + 2 * d * f + 9 * d + f  # in/out projections, two linears, two norms
    params = v * d + n * d + depth * per_layer + d * k + k  # (the unregistered prototype layer is built too)
    acts = 2 * n * d + depth * (n * (9 * d + f) + 2 * h * n * n) + k
    return ModelSize(params, acts, 5 + 10 * depth)


@register_architecture(
    "shapes_resnet", {"in_channels": 3, "num_classes": 4, "widths": [16, 32, 64], "strides": [2, 2, 1]},
    estimate=_resnet_size,
)
class ShapesResNet(nn.Module):
    """Residual CNN: stem, three stages of one BasicBlock, global pool, linear.

    ``layer3`` is the last conv stage (8x8 for 32x32 inputs with the default
    strides): the Grad-CAM target.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 4,
        widths: list[int] | tuple[int, ...] = (16, 32, 64),
        strides: list[int] | tuple[int, ...] = (2, 2, 1),
    ):
        super().__init__()
        if len(widths) != 3 or len(strides) != 3:
            raise ValueError("widths and strides must list 3 stages each")
        w1, w2, w3 = (int(w) for w in widths)
        s1, s2, s3 = (int(s) for s in strides)
        self.conv1 = nn.Conv2d(in_channels, w1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(w1, w1, stride=s1)
        self.layer2 = BasicBlock(w1, w2, stride=s2)
        self.layer3 = BasicBlock(w2, w3, stride=s3)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(w3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 3, 32, 32] -> [N, K]
        x = self.relu(self.bn1(self.conv1(x)))  # [N, w1, 32, 32]
        x = self.layer1(x)  # [N, w1, 16, 16] (default strides 2, 2, 1)
        x = self.layer2(x)  # [N, w2, 8, 8]
        x = self.layer3(x)  # [N, w3, 8, 8]
        x = torch.flatten(self.avgpool(x), 1)  # [N, w3]
        return self.head(x)


# --------------------------------------------------------------------------
# tabular_mlp
# --------------------------------------------------------------------------
@register_architecture(
    "tabular_mlp", {"in_features": 30, "hidden": [64, 32], "num_classes": 2, "dropout": 0.1}, estimate=_mlp_size
)
class TabularMLP(nn.Module):
    """MLP with separate (non-in-place) ``nn.ReLU`` modules, DeepExplainer-friendly."""

    def __init__(self, in_features: int = 30, hidden: list[int] | tuple[int, ...] = (64, 32), num_classes: int = 2, dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        width = int(in_features)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU(), nn.Dropout(float(dropout))]
            width = int(h)
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, F] -> [N, K]
        return self.head(self.body(x))


# --------------------------------------------------------------------------
# text_transformer
# --------------------------------------------------------------------------
def _sinusoids(length: int, dim: int) -> torch.Tensor:
    """Sinusoidal position table [length, dim]: the start for learned positions."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]  # [L, 1]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-torch.log(torch.tensor(1e4)) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


@register_architecture(
    "text_transformer",
    {
        "vocab_size": 64,
        "max_len": 16,
        "d_model": 32,
        "nhead": 2,
        "num_layers": 2,
        "dim_feedforward": 64,
        "num_classes": 2,
        "dropout": 0.1,
        "pad_id": 0,
        "norm_first": False,
    },
    estimate=_transformer_size,
)
class TextTransformer(nn.Module):
    """Tiny transformer classifier over token ids; reads out position 0 (``<cls>``).

    Padding tokens (``pad_id``) are masked out as attention keys with
    ``src_key_padding_mask``. The encoder's nested-tensor fast path is off so
    eager, TorchScript and ``torch.export`` outputs agree.
    """

    def __init__(
        self,
        vocab_size: int = 64,
        max_len: int = 16,
        d_model: int = 32,
        nhead: int = 2,
        num_layers: int = 2,
        dim_feedforward: int = 64,
        num_classes: int = 2,
        dropout: float = 0.1,
        pad_id: int = 0,
        norm_first: bool = False,
    ):
        super().__init__()
        self.pad_id = int(pad_id)
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=self.pad_id)
        self.pos_embedding = nn.Parameter(_sinusoids(max_len, d_model)[None])  # [1, L, D], learned
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward=dim_feedforward, dropout=dropout, batch_first=True,
            norm_first=norm_first,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # [N, L] int64 -> [N, K]
        pad_mask = ids == self.pad_id  # [N, L] True = ignore as key
        x = self.embedding(ids) + self.pos_embedding[:, : ids.shape[1]]  # [N, L, D]
        x = self.encoder(x, src_key_padding_mask=pad_mask)  # [N, L, D]
        return self.head(x[:, 0])  # [N, K]
