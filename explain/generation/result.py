"""The results of `explain.generation`: plain arrays in dataclasses, so they cross the
model-process boundary (`explain.loading.model_wire` rebuilds them through these constructors)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _ids(value, name: str) -> np.ndarray:
    a = np.asarray(value)
    if a.ndim != 1 or not (a.size == 0 or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D array of token ids")
    return a.astype(np.int64)


def chunk_note(sizes: list[int]) -> list[str]:
    """The one note saying how the engine cut a generation's grid (rows: token x step points), or none:
    "grid in chunks of 384 rows", "grid in chunks of 1 to 384 rows"."""
    if not sizes:
        return []
    low, high = min(sizes), max(sizes)
    return [f"grid in chunks of {high if low == high else f'{low} to {high}'} row{'' if high == 1 else 's'}"]


@dataclass
class GeneratedText:
    """One prompt and the tokens that follow it (generated, or given and teacher-forced).

    Attributes:
        prompt_ids: int64 [P] the prompt's token ids.
        generated_ids: int64 [T] the tokens after it.
        logprobs: float32 [T] the model's log-probability of each of them, given all before it.
        forced: True when the tokens were given (teacher forcing), False when generated greedily.
    """

    prompt_ids: np.ndarray
    generated_ids: np.ndarray
    logprobs: np.ndarray
    forced: bool = False

    def __post_init__(self) -> None:
        self.prompt_ids = _ids(self.prompt_ids, "prompt_ids")
        self.generated_ids = _ids(self.generated_ids, "generated_ids")
        self.logprobs = np.asarray(self.logprobs, dtype=np.float32).reshape(-1)
        if self.prompt_ids.size == 0 or self.logprobs.shape != self.generated_ids.shape:
            raise ValueError("a generated text needs a prompt and one log-probability per token")

    @property
    def input_ids(self) -> np.ndarray:
        """int64 [P + T]: the prompt, then the tokens after it."""
        return np.concatenate([self.prompt_ids, self.generated_ids])


@dataclass
class GenerationAttribution:
    """Each generated token's log-probability attributed to every position before it.

    Attributes:
        input_ids: int64 [P + T] prompt + generated tokens.
        prompt_length: P.
        values: float32 [T, P + T]; row t is the attribution of token P + t's log-probability
            to positions 0 .. P + t - 1, 0 at positions >= P + t.
        logprobs: float32 [T] log-probability of each generated token (full forward, no cache).
        baseline_logprobs: float32 [T] the same with the reference embeddings at every earlier
            position (NaN for methods without a reference).
        completeness_error: float32 [T] |sum(values[t]) - (logprobs[t] - baseline_logprobs[t])|
            (NaN where the method defines none: saliency, input x gradient).
        method, params: what computed it (``steps``, ``baseline``).
        seconds: wall time of this text's grid.
        notes: remarks for the reader.
    """

    input_ids: np.ndarray
    prompt_length: int
    values: np.ndarray
    logprobs: np.ndarray
    baseline_logprobs: np.ndarray
    completeness_error: np.ndarray
    method: str
    params: dict = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.input_ids = _ids(self.input_ids, "input_ids")
        self.prompt_length = int(self.prompt_length)
        t = self.input_ids.size - self.prompt_length
        if self.prompt_length < 1 or t < 0:
            raise ValueError("prompt_length must be between 1 and the number of ids")
        self.values = np.asarray(self.values, dtype=np.float32)
        if self.values.shape != (t, self.input_ids.size):
            raise ValueError(f"values must be [{t}, {self.input_ids.size}], not {list(self.values.shape)}")
        for name in ("logprobs", "baseline_logprobs", "completeness_error"):
            arr = np.asarray(getattr(self, name), dtype=np.float32).reshape(-1)
            if arr.shape != (t,):
                raise ValueError(f"{name} must hold one value per generated token")
            setattr(self, name, arr)

    @property
    def generated_ids(self) -> np.ndarray:
        """int64 [T]."""
        return self.input_ids[self.prompt_length:]


@dataclass
class LogitLens:
    """The top-k next tokens each layer would predict, per position.

    Attributes:
        top_ids: int64 [N, layers + 1, L, k] (index 0: the embeddings; the last: the model's own
            prediction); -1 at padded positions (beyond a prompt's length).
        top_probs: float32 [N, layers + 1, L, k] their probabilities; 0 at padded positions.
        lengths: int64 [N] each prompt's length.
        notes: remarks (a lens whose last layer differs from the model's output says so).
    """

    top_ids: np.ndarray
    top_probs: np.ndarray
    lengths: np.ndarray
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.top_ids = np.asarray(self.top_ids, dtype=np.int64)
        self.top_probs = np.asarray(self.top_probs, dtype=np.float32)
        self.lengths = np.asarray(self.lengths, dtype=np.int64).reshape(-1)
        if self.top_ids.ndim != 4 or self.top_ids.shape != self.top_probs.shape or self.top_ids.shape[0] != self.lengths.size:
            raise ValueError("top_ids and top_probs must be [N, layers + 1, L, k], one length per prompt")
