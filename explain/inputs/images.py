"""Images to model-ready pixels, one way: the model's own image processor, else the spec's resize and normalisation.

Two kinds of preprocessing, chosen by the spec:

- ``spec.image_processor`` (a Hugging Face model's ``preprocessor_config.json``, checked by
  `check_image_processor`): the picture goes through transformers' own image processor class for
  that config (resize, centre crop, rescale, normalise exactly as transformers does), built from
  the checked dict only, never from remote code;
- otherwise the spec's own fields: ``resize`` (the shorter side to that many pixels, then a centre
  crop to H x W) or, when unset, the whole picture stretched to H x W; pixels to [0, 1]; ``mean`` /
  ``std`` per channel.

`read_image` decodes an upload (pixel limit checked before decoding) and keeps a small copy of the
original next to the model input, so a page can show both.
"""
from __future__ import annotations

import functools
import io
import json
import warnings
from typing import Any

import numpy as np

from explain import config
from explain.errors import CorruptFile, IncompatibleInput, TooLarge
from explain.spec import InputSpec, check_processor_config

#: The longest side of the copy of an original picture kept for display.
ORIGINAL_SIDE = 256


# --------------------------------------------------------------------------
# a Hugging Face image processor, from its checked config
# --------------------------------------------------------------------------
def check_image_processor(cfg: Any, model_type: str | None = None) -> dict[str, Any]:
    """A ``preprocessor_config.json`` checked for use: no remote code, every size bounded, a known class.

    Returns:
        The config as plain JSON with ``image_processor_type`` set to transformers' class name.

    Raises:
        UnsafeFile: the config asks for remote code (``auto_map``).
        IncompatibleInput: not an object, a size over the limit, or no image processor class for it.
    """
    check_processor_config(cfg)
    out = json.loads(json.dumps(cfg))  # plain JSON values only
    out.pop("processor_class", None)
    out["image_processor_type"] = _processor_class(cfg.get("image_processor_type"), model_type).__name__
    return out


def _processor_class(name: Any, model_type: str | None) -> type:
    """transformers' PIL-backed image processor class for a config's type name (or the model type's)."""
    import transformers
    from transformers.image_processing_utils import BaseImageProcessor
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    candidates = []
    if isinstance(name, str) and name.isidentifier():
        base = name.removesuffix("Fast").removesuffix("Pil")
        candidates += [base + "Pil", base]
    by_type = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type or "") or {}
    if isinstance(by_type, dict):
        candidates += [c for c in (by_type.get("pil"), by_type.get("torchvision")) if c]
    for candidate in candidates:
        cls = getattr(transformers, candidate, None)
        if isinstance(cls, type) and issubclass(cls, BaseImageProcessor) and "ImageProcessor" in candidate:
            return cls
    raise IncompatibleInput(f"transformers has no image processor {name or model_type!r}.",
                            "Remove preprocessor_config.json to resize and normalise with the spec instead.")


@functools.lru_cache(maxsize=8)
def _processor(cfg_json: str) -> Any:
    cfg = json.loads(cfg_json)
    cls = _processor_class(cfg.get("image_processor_type"), None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls.from_dict({k: v for k, v in cfg.items() if k != "image_processor_type"})


def processor_for(cfg: dict[str, Any]) -> Any:
    """transformers' image processor for a checked config (one per config, kept)."""
    return _processor(json.dumps(cfg, sort_keys=True))


def processor_output_shape(cfg: dict[str, Any], channels: int = 3) -> tuple[int, int, int] | None:
    """The [C, H, W] a processor gives every picture, or None when it depends on the picture's shape."""
    from PIL import Image

    shapes = set()
    for h, w in ((97, 131), (131, 97)):
        img = Image.new("RGB" if channels == 3 else "L", (w, h))
        try:
            shapes.add(_run_processor(cfg, img).shape)
        except Exception:  # a processor that cannot run on a plain picture: treated as no fixed size
            return None
    return tuple(int(d) for d in shapes.pop()) if len(shapes) == 1 else None


def _run_processor(cfg: dict[str, Any], img: Any) -> np.ndarray:
    processor = processor_for(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = processor(img, return_tensors="np")["pixel_values"]  # [1, C, H, W]
    return np.asarray(out[0], np.float32)


def processor_summary(cfg: dict[str, Any]) -> str:
    """One line: what the processor does (for captions and the model card)."""
    parts = []
    size = cfg.get("size")
    if cfg.get("do_resize", True):
        if isinstance(size, dict) and "shortest_edge" in size:
            edge = size["shortest_edge"]
            crop_pct = cfg.get("crop_pct")
            if crop_pct and edge < 384:  # ConvNext's rule: resize to edge / crop_pct, crop edge x edge
                parts.append(f"shorter side to {edge} / {crop_pct:g}, centre crop {edge}×{edge}")
            else:
                parts.append(f"shorter side to {edge}")
        elif isinstance(size, dict) and "height" in size:
            parts.append(f"resize to {size['height']}×{size.get('width', size['height'])}")
        elif isinstance(size, int):
            parts.append(f"resize to {size}")
    crop = cfg.get("crop_size")
    if cfg.get("do_center_crop") and isinstance(crop, dict):
        parts.append(f"centre crop {crop.get('height')}×{crop.get('width')}")
    if cfg.get("do_normalize", True) and cfg.get("image_mean") is not None:
        parts.append("normalise mean " + ", ".join(f"{v:g}" for v in cfg["image_mean"])
                     + " / std " + ", ".join(f"{v:g}" for v in cfg.get("image_std") or []))
    name = str(cfg.get("image_processor_type", "image processor")).removesuffix("Pil")
    return f"the model's own {name}: " + ("; ".join(parts) or "as configured")


# --------------------------------------------------------------------------
# the one preprocessing and its inverse for display
# --------------------------------------------------------------------------
def describe_preprocessing(spec: InputSpec) -> str:
    """How a picture becomes this model's input, in one line (named where the input is shown)."""
    c, h, w = spec.input_shape
    if spec.image_processor:
        return processor_summary(spec.image_processor)
    resize = (f"shorter side to {spec.resize}, centre crop {h}×{w}" if spec.resize
              else f"stretched to {h}×{w}")
    norm = ("mean " + ", ".join(f"{v:g}" for v in spec.mean) + " / std " + ", ".join(f"{v:g}" for v in spec.std)
            if spec.mean and spec.std else "no mean/std (pixels on [0, 1])")
    return f"{resize}; {norm}"


def preprocess_image(img: Any, spec: InputSpec, name: str = "image") -> np.ndarray:
    """A decoded PIL picture to the model's [C, H, W] float32 input, as the spec says.

    Raises:
        IncompatibleInput: the model's processor gives another size than the model expects.
    """
    c, h, w = spec.input_shape
    img = img.convert("L" if c == 1 else "RGB")
    if spec.image_processor:
        pixels = _run_processor(spec.image_processor, img)
        if tuple(pixels.shape) != (c, h, w):
            raise IncompatibleInput(f"The model's image processor makes {name} {list(pixels.shape)}, "
                                    f"but the model expects {[c, h, w]}.")
        return pixels
    from PIL import Image

    if spec.resize:  # shorter side to `resize`, then the centre H x W
        scale = spec.resize / min(img.width, img.height)
        img = img.resize((max(w, round(img.width * scale)), max(h, round(img.height * scale))), Image.BILINEAR)
        left, top = (img.width - w) // 2, (img.height - h) // 2
        img = img.crop((left, top, left + w, top + h))
    else:
        img = img.resize((w, h), Image.BILINEAR)
    pixels = (np.asarray(img, np.float32) / 255.0).reshape(h, w, c).transpose(2, 0, 1)  # [C, H, W] in [0, 1]
    if spec.mean and spec.std:
        pixels = (pixels - np.asarray(spec.mean, np.float32).reshape(-1, 1, 1)) / np.asarray(spec.std, np.float32).reshape(-1, 1, 1)
    return pixels.astype(np.float32)


def image_for_display(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 [H, W, 3] from one model-ready [C, H, W] image (normalisation undone)."""
    img = np.asarray(x, np.float32)
    if spec.mean and spec.std:
        c = img.shape[0]
        img = img * np.asarray(spec.std, np.float32).reshape(-1, 1, 1)[:c] + np.asarray(spec.mean, np.float32).reshape(-1, 1, 1)[:c]
    img = np.clip(img, 0.0, 1.0).transpose(1, 2, 0)  # [H, W, C]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return (img[:, :, :3] * 255.0 + 0.5).astype(np.uint8)


def decode_image(data: bytes, name: str) -> Any:
    """The picture in ``data`` as a PIL image; the pixel limit checked before it is decoded.

    Raises:
        TooLarge: over `config.max_image_pixels` (a decompression bomb or a huge picture).
        CorruptFile: not a readable image.
    """
    from PIL import Image

    limit = config.max_image_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > limit:
                raise TooLarge(
                    f"{name} is {img.width}x{img.height} pixels, over the {limit:,} pixel limit "
                    "(a decompression bomb or a very large image).",
                    "Resize it before uploading.",
                )
            img.seek(0)
            img.load()
    except TooLarge:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLarge(f"{name} is too many pixels to decode ({exc}).") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise CorruptFile(f"{name} is not a readable image ({exc}).") from None
    return img


def original_copy(img: Any) -> np.ndarray:
    """uint8 [h, w, 3]: the picture as uploaded, its longer side at most `ORIGINAL_SIDE` (for display)."""
    from PIL import Image

    copy = img.convert("RGB")
    copy.thumbnail((ORIGINAL_SIDE, ORIGINAL_SIDE), Image.BILINEAR)
    return np.asarray(copy, np.uint8)


def upsample(heat: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a [h, w] map to the picture's [height, width], to lay it over the
    input (a layer's map, a Vision Transformer's patch grid)."""
    h, w = heat.shape
    rows = (np.arange(height) * h // height).clip(0, h - 1)
    cols = (np.arange(width) * w // width).clip(0, w - 1)
    return heat[rows][:, cols]
