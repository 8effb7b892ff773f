"""Reference inputs ("baselines") and background sets for attribution methods.

Integrated gradients, DeepLift and the SHAP family explain the difference
between the model's output at an input and at a reference. The choice of
reference changes the answer, so it is always explicit:

- ``zero``: all zeros (for standardised tabular data this is the data mean;
  for text the zero embedding vector).
- ``blurred``: a Gaussian-blurred copy of each image (images only).
- ``mean``: the mean of the background set when one is given, otherwise the
  mean of the inputs being explained.
- ``file``: a user-supplied array: one reference row broadcast to every input,
  or one row per input.

Background sets (SHAP family) are summarised with k-means, as ``shap.kmeans``
does, so that large uploads stay cheap. What a method compared with is named
under each of its maps in one wording, `describe_background` (recorded as
``background_description`` in the `Attribution`'s params).

Text models have one more reference, a *reference text* in token ids
(`text_reference`): padding, or ``<unk>`` for every real token, with the first
token kept. Every method and view that needs one builds it there.
"""
from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from explain.errors import IncompatibleInput, UsageError
from explain.inputs.text import special_token_ids
from explain.spec import InputSpec

BASELINE_KINDS = ("zero", "blurred", "mean", "file")
#: what `describe_background` can name.
BACKGROUND_DESCRIPTIONS = ("array", "inputs", "mean", "zero", "blurred", "padding", "zero_embedding")
#: the Gaussian sigma, in pixels, of every blurred reference.
BLUR_SIGMA = 4.0
#: what a reference text is made of (`text_reference`).
TEXT_REFERENCE_KINDS = ("pad", "unk")
#: which first token a reference text keeps (`text_reference`).
FIRST_TOKEN_RULES = ("input", "most_common", "cls", None)

Ids = TypeVar("Ids", np.ndarray, torch.Tensor)


def text_reference(ids: Ids, spec: InputSpec, kind: str = "pad", keep_first: str | None = "input") -> Ids:
    """The reference text of a text model's inputs: token ids shaped like ``ids``.

    Attribution in embedding space explains f(text) - f(reference text); this
    is the one place that reference is built. The ``<pad>`` and ``<unk>`` ids
    come from the spec's vocabulary (`special_token_ids`).

    Args:
        ids: token ids [N, L] (numpy or torch; the result has the same type,
            dtype and device).
        spec: the model's spec.
        kind: what the reference text is made of:

            - ``pad``: padding at every position ("no text at all");
            - ``unk``: ``<unk>`` at every position where the input has a real
              token, padding where the input has padding ("as many words,
              none known": the padding mask stays the input's).
        keep_first: which token position 0 holds instead. A text of padding
            only is masked out entirely as attention keys (NaN), so the
            callers keep one:

            - ``input``: each input's own first token (its ``<cls>``), row by row
              (layer integrated gradients, layer importance, layer attribution);
            - ``most_common``: the most common first token of ``ids`` (ties: the
              smallest id), the same in every row (DeepLift, DeepLift-SHAP);
            - ``cls``: the spec's ``cls_token`` when its vocabulary has it, else
              as ``most_common`` (shap_deep's background);
            - ``None``: nothing kept (layer attribution of a spec without a
              ``cls_token``).

        The three rules agree when every input starts with the spec's
        ``<cls>``, as the sample model's do; each caller keeps its own so
        that no result changes.

    Raises:
        UsageError: an unknown ``kind`` or ``keep_first``.
    """
    if kind not in TEXT_REFERENCE_KINDS:
        raise UsageError(f"Unknown reference text {kind!r}. Use one of {', '.join(TEXT_REFERENCE_KINDS)}.")
    if keep_first not in FIRST_TOKEN_RULES:
        raise UsageError(f"Unknown first-token rule {keep_first!r}.")
    is_tensor = isinstance(ids, torch.Tensor)
    arr = ids.detach().cpu().numpy() if is_tensor else np.asarray(ids)
    pad, unk = special_token_ids(spec)
    ref = np.full_like(arr, pad) if kind == "pad" else np.where(arr == pad, pad, unk).astype(arr.dtype)
    if keep_first == "input":
        ref[:, 0] = arr[:, 0]
    elif keep_first is not None:
        vocab = list(spec.vocabulary or [])
        if keep_first == "cls" and spec.cls_token and spec.cls_token in vocab:
            ref[:, 0] = vocab.index(spec.cls_token)
        elif len(arr):
            values, counts = np.unique(arr[:, 0], return_counts=True)
            ref[:, 0] = values[np.argmax(counts)]
    return torch.as_tensor(ref, dtype=ids.dtype, device=ids.device) if is_tensor else ref


def make_baseline(
    kind: str,
    inputs: np.ndarray,
    modality: str,
    reference: np.ndarray | None = None,
    background: np.ndarray | None = None,
    blur_sigma: float = BLUR_SIGMA,
) -> np.ndarray:
    """One reference per input, in input space (float) or token ids (text).

    Args:
        kind: one of :data:`BASELINE_KINDS`.
        inputs: model-ready batch [N, ...].
        modality: ``image`` | ``tabular`` | ``text``.
        reference: the user array for ``file``: [...] or [1, ...] or [N, ...].
        background: optional background set [M, ...] whose mean ``mean`` uses.
        blur_sigma: Gaussian sigma in pixels for ``blurred``.

    Returns:
        A float array shaped like ``inputs`` ([N, ...]). Text models are
        attributed in embedding space; their methods map token-id references
        through the embedding layer themselves.

    Raises:
        UsageError: unknown kind, or ``file`` without a reference.
        IncompatibleInput: a reference whose shape does not fit the inputs, or
            ``blurred`` for a non-image model.
    """
    inputs = np.asarray(inputs)
    if kind == "zero":
        return np.zeros_like(inputs, dtype=np.float32)
    if kind == "blurred":
        if modality != "image":
            raise IncompatibleInput("The blurred baseline is defined for images only.", "Use zero or mean.")
        return blur_images(inputs.astype(np.float32), blur_sigma)
    if kind == "mean":
        source = background if background is not None and len(background) else inputs
        source = np.asarray(source, dtype=np.float32)
        _check_shape(source, inputs, "background")
        return np.broadcast_to(source.mean(axis=0, keepdims=True), inputs.shape).astype(np.float32)
    if kind == "file":
        if reference is None:
            raise UsageError("The file baseline needs a baseline array (--baseline FILE).")
        return broadcast_reference(reference, inputs).astype(np.float32)
    raise UsageError(f"Unknown baseline {kind!r}. Use one of {', '.join(BASELINE_KINDS)}.")


def broadcast_reference(reference: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """A reference array as [N, ...]: one row broadcast to all, or one per input."""
    ref = np.asarray(reference)
    sample_shape = inputs.shape[1:]
    if ref.shape == sample_shape:
        ref = ref[None]
    if ref.shape[1:] != sample_shape or ref.shape[0] not in (1, inputs.shape[0]):
        raise IncompatibleInput(
            f"The baseline has shape {ref.shape}; expected {sample_shape}, "
            f"(1, {', '.join(map(str, sample_shape))}) or one row per input ({inputs.shape[0]})."
        )
    return np.broadcast_to(ref, inputs.shape).copy()


def blur_images(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over H and W of [N, C, H, W] images (reflect padding)."""
    radius = max(1, int(round(3 * sigma)))
    xs = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (xs / max(sigma, 1e-6)) ** 2)
    kernel /= kernel.sum()
    out = images.astype(np.float64)
    for axis in (2, 3):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > radius else "edge")
        acc = np.zeros_like(out)
        for i, w in enumerate(kernel):
            acc += w * np.take(padded, np.arange(i, i + out.shape[axis]), axis=axis)
        out = acc
    return out.astype(np.float32)


def summarize_background(background: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A k-means summary of a background set, weighted by cluster size.

    Like ``shap.kmeans``: cluster centres snapped to the nearest real value
    per feature are not needed for gradients, so the plain centres are used.

    Args:
        background: [M, ...] float samples.
        k: number of centres; when ``M <= k`` the set is returned unchanged.

    Returns:
        (centres [k, ...], weights [k] summing to 1).
    """
    bg = np.asarray(background, dtype=np.float32)
    m = bg.shape[0]
    if m <= k:
        return bg, np.full(m, 1.0 / max(m, 1))
    from sklearn.cluster import KMeans

    flat = bg.reshape(m, -1)
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(flat)
    weights = np.bincount(km.labels_, minlength=k).astype(np.float64)
    centres = km.cluster_centers_.astype(np.float32).reshape((k,) + bg.shape[1:])
    return centres, weights / weights.sum()


def _check_shape(source: np.ndarray, inputs: np.ndarray, what: str) -> None:
    if source.shape[1:] != inputs.shape[1:]:
        raise IncompatibleInput(
            f"The {what} has samples of shape {source.shape[1:]}, the inputs {inputs.shape[1:]}."
        )


def background_set(
    background: np.ndarray | None,
    inputs: np.ndarray,
    modality: str,
    size: int,
    fallback: str = "zero",
    seed: int = 0,
    kmeans: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The reference distribution of the SHAP-family methods, in input space.

    Args:
        background: user samples [M, ...] (model-ready), or None.
        inputs: the batch being explained [N, ...] (for shapes and ``mean``).
        modality: tabular backgrounds larger than ``size`` are k-means
            summarised (like ``shap.kmeans``); image/text ones subsampled.
        size: most rows kept.
        fallback: without a background, one ``zero`` (all-zero / all-pad) or
            ``mean`` (of the inputs) row.
        kmeans: summarise tabular backgrounds (False: subsample them too,
            for explainers that cannot weight rows).

    Returns:
        (rows [M, ...], weights [M] summing to 1).
    """
    inputs = np.asarray(inputs)
    if background is None or len(background) == 0:
        if fallback == "mean" and modality != "text":
            row = inputs.astype(np.float32).mean(axis=0, keepdims=True)
        elif fallback == "zero":
            row = np.zeros_like(inputs[:1])
        else:
            raise UsageError(f"Without a background set the baseline must be zero or mean, not {fallback!r}.")
        return row, np.ones(1)
    bg = np.asarray(background)
    if bg.ndim == inputs.ndim - 1:
        bg = bg[None]
    _check_shape(bg, inputs, "background")
    if len(bg) <= size:
        return bg, np.full(len(bg), 1.0 / len(bg))
    if modality == "tabular" and kmeans:
        return summarize_background(bg, size, seed)
    keep = np.sort(np.random.default_rng(seed).choice(len(bg), size=size, replace=False))
    return bg[keep], np.full(size, 1.0 / size)


def _rows(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def describe_background(kind: str, rows: int, inputs: int, given: int | None = None, summary: str = "") -> str:
    """The one wording of what a SHAP-family method compared its inputs with, named under
    each map (``background: ...``) so that a background never acts silently.

    Args:
        kind: one of `BACKGROUND_DESCRIPTIONS`:

            - ``array``: ``rows`` kept of ``given`` uploaded rows (``summary`` says how they
              were picked: "k-means centres", "sampled", "evenly spaced");
            - ``inputs``: ``rows`` of the explained batch itself (each map against all of them);
            - ``mean``: one row, the mean of the ``inputs`` explained inputs;
            - ``zero``: one all-zero row;
            - ``blurred``: each input's own blurred copy (`blur_images`, `BLUR_SIGMA`);
            - ``padding``: one reference text of padding, first token kept (`text_reference`);
            - ``zero_embedding``: the zero vector at a text model's embeddings.
        rows: background rows used.
        inputs: inputs explained.
        given: uploaded rows (``array`` only).

    Raises:
        UsageError: an unknown ``kind``.
    """
    if kind == "array":
        given = rows if given is None else given
        if rows == given:
            return _rows(rows, "uploaded row")
        return f"{rows} {summary or 'rows'} of {_rows(given, 'uploaded row')}"
    if kind == "inputs":
        if rows < inputs:
            return f"{rows} of the {inputs} inputs of this batch, evenly spaced (each map against all of them)"
        return f"the {inputs} inputs of this batch (each map against all of them)" if inputs > 1 else "the input itself"
    if kind == "mean":
        return f"the mean of the {_rows(inputs, 'input')}"
    if kind == "zero":
        return "zeros"
    if kind == "blurred":
        return f"each input's own blurred copy (σ {BLUR_SIGMA:g} px)"
    if kind == "padding":
        return "padding (first token kept)"
    if kind == "zero_embedding":
        return "the zero embedding"
    raise UsageError(f"Unknown background description {kind!r}. Use one of {', '.join(BACKGROUND_DESCRIPTIONS)}.")


def background_description(background: np.ndarray | None, rows: np.ndarray, inputs: np.ndarray, modality: str,
                           fallback: str = "zero", kmeans: bool = True) -> str:
    """`describe_background` of what `background_set` returned (``rows``) for these arguments."""
    if background is None or len(background) == 0:
        return describe_background("mean" if fallback == "mean" and modality != "text" else "zero",
                                   len(rows), len(inputs))
    given = 1 if np.ndim(background) == np.ndim(inputs) - 1 else len(background)
    summary = "k-means centres" if modality == "tabular" and kmeans else "sampled rows"
    return describe_background("array", len(rows), len(inputs), given, summary)
