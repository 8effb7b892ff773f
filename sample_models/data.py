"""Deterministic data for the three sample models (seeded numpy, no downloads).

- shapes: 32x32 RGB images of one shape (circle, square, triangle, cross) at a
  random position, size and colour on a noisy textured background, with the
  boolean object mask of every image (ground truth for localisation).
- cancer: scikit-learn's bundled breast-cancer table, stratified split,
  standardised with the training mean/std.
- sentiment: generated sentences over a fixed vocabulary. The label follows
  `sentiment_label`: each sentiment word counts +1 (positive) or -1 (negative),
  flipped when the token right before it is ``not``; the sentence is positive
  when the sum is > 0. Sentences whose sum is 0 are never generated. A
  generated sentence is negated as a whole (``not`` before each of its sentiment
  words, or none): a 2-layer transformer trained for seconds on CPU does not
  learn which word a lone ``not`` precedes, so mixed negation is not generated.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# --------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------
SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
IMAGE_SIZE = 32


@dataclass
class ShapesData:
    """images [N, 3, 32, 32] float32 in [0, 1], labels [N] int64, masks [N, 32, 32] bool."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray


def make_shapes(n: int, seed: int) -> ShapesData:
    """Generate ``n`` shape images, classes balanced in turn (then shuffled)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(SHAPE_CLASSES)).astype(np.int64)
    images = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    masks = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), bool)
    for i, label in enumerate(labels):
        images[i], masks[i] = _draw_shape(rng, int(label))
    return ShapesData(images, labels, masks)


def _draw_shape(rng: np.random.Generator, label: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)  # [32, 32] each
    background = _draw_background(rng, xx, yy)  # [3, 32, 32]
    base = background.mean(axis=(1, 2))
    s = rng.uniform(5.0, 10.0)  # half-extent in pixels
    cx, cy = rng.uniform(s + 1, IMAGE_SIZE - 2 - s, size=2)
    dx, dy = xx - cx, yy - cy
    if label == 0:  # circle
        mask = dx**2 + dy**2 <= s**2
    elif label == 1:  # square, area close to the circle's
        h = 0.85 * s
        mask = (np.abs(dx) <= h) & (np.abs(dy) <= h)
    elif label == 2:  # triangle, apex up or down
        dy = dy if rng.random() < 0.5 else -dy
        mask = (np.abs(dx) <= (dy + s) / 2 + 0.5) & (dy <= s) & (dy >= -s)
    else:  # cross
        t = max(1.5, s / 3)
        mask = ((np.abs(dx) <= t) & (np.abs(dy) <= s)) | ((np.abs(dy) <= t) & (np.abs(dx) <= s))
    colour = rng.uniform(0, 1, size=3)
    while np.linalg.norm(colour - base) < 0.45:  # keep the object visible
        colour = rng.uniform(0, 1, size=3)
    shade = 1 + rng.normal(0, 0.04, size=(1, IMAGE_SIZE, IMAGE_SIZE))  # object texture
    image = np.where(mask[None], colour[:, None, None] * shade, background)
    return np.clip(image, 0, 1).astype(np.float32), mask


def _draw_background(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Random base colour + oriented stripes + a blob + pixel noise, [3, 32, 32]."""
    base = rng.uniform(0.25, 0.75, size=3)[:, None, None]
    theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(0.2, 0.8), rng.uniform(0, 2 * np.pi)
    stripes = np.sin(freq * (np.cos(theta) * xx + np.sin(theta) * yy) + phase)
    bx, by, br = rng.uniform(0, IMAGE_SIZE, size=2).tolist() + [rng.uniform(3, 8)]
    blob = np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * br**2))
    tint = rng.uniform(-1, 1, size=3)[:, None, None]
    noise = rng.normal(0, 0.06, size=(3, IMAGE_SIZE, IMAGE_SIZE))
    return base + 0.08 * stripes[None] + 0.15 * tint * blob[None] + noise


# --------------------------------------------------------------------------
# cancer
# --------------------------------------------------------------------------
@dataclass
class CancerData:
    """Raw (un-standardised) splits plus the training mean/std and names."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    feature_names: list[str]
    class_names: list[str]

    def standardise(self, x: np.ndarray) -> np.ndarray:
        """Model-ready features: (x - mean) / std, float32."""
        return ((x - self.mean) / self.std).astype(np.float32)


def load_cancer(seed: int, val_fraction: float = 0.2, test_fraction: float = 0.2) -> CancerData:
    """sklearn's breast-cancer data, stratified train/val/test split."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    bunch = load_breast_cancer()
    x, y = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_fraction / (1 - test_fraction), stratify=y_rest, random_state=seed
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    return CancerData(
        x_train, y_train, x_val, y_val, x_test, y_test, mean, std,
        [str(f) for f in bunch.feature_names], [str(c) for c in bunch.target_names],
    )


# --------------------------------------------------------------------------
# sentiment
# --------------------------------------------------------------------------
PAD, UNK, CLS = "<pad>", "<unk>", "<cls>"
NEGATION = "not"
POSITIVE_WORDS: tuple[str, ...] = ("good", "great", "excellent", "wonderful", "love", "enjoyable", "brilliant", "fun")
NEGATIVE_WORDS: tuple[str, ...] = ("bad", "terrible", "awful", "boring", "hate", "dull", "poor", "worst")
SENTIMENT_WORDS: frozenset[str] = frozenset(POSITIVE_WORDS + NEGATIVE_WORDS)
FILLER_WORDS: tuple[str, ...] = (
    "the", "a", "this", "that", "movie", "film", "story", "plot", "acting", "music",
    "ending", "scenes", "actors", "director", "was", "is", "were", "it", "and", "but",
    "i", "we", "they", "really", "very", "quite", "so", "with", "of", "in",
    "on", "about", "saw", "watched", "thought", "felt", "overall", "time", "again", "cast",
)
#: index = token id; <pad>=0, <unk>=1, <cls>=2.
VOCABULARY: tuple[str, ...] = (PAD, UNK, CLS, NEGATION) + POSITIVE_WORDS + NEGATIVE_WORDS + FILLER_WORDS
SEQ_LEN = 16  # including <cls>


@dataclass
class SentimentData:
    """texts (one sentence each), ids [N, 16] int64 (<cls> first, <pad> after), labels [N]."""

    texts: list[str]
    ids: np.ndarray
    labels: np.ndarray


def sentiment_label(tokens: list[str]) -> int:
    """The documented rule: 1 (positive) if the signed sentiment sum is > 0, else 0.

    A positive word counts +1, a negative word -1; ``not`` right before a
    sentiment word flips its sign (``not`` before any other word does nothing).
    """
    score = 0
    for i, tok in enumerate(tokens):
        if tok in SENTIMENT_WORDS:
            sign = 1 if tok in POSITIVE_WORDS else -1
            if i > 0 and tokens[i - 1] == NEGATION:
                sign = -sign
            score += sign
    return int(score > 0)


def tokenize(texts: list[str], max_len: int = SEQ_LEN) -> np.ndarray:
    """Lower-case, split on whitespace, prepend <cls>, map unknown words to <unk>, pad.

    Returns ids [N, max_len] int64; longer texts are truncated.
    """
    index = {tok: i for i, tok in enumerate(VOCABULARY)}
    ids = np.zeros((len(texts), max_len), np.int64)
    for row, text in enumerate(texts):
        toks = [CLS] + text.lower().split()
        seq = [index.get(t, index[UNK]) for t in toks][:max_len]
        ids[row, : len(seq)] = seq
    return ids


def make_sentiment(n: int, seed: int) -> SentimentData:
    """Generate ``n`` sentences of 5-15 words with 1-3 sentiment words, labels balanced."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    want = rng.permutation(np.arange(n) % 2)
    for label in want:
        while True:
            tokens = _draw_sentence(rng)
            if _signed_sum(tokens) != 0 and sentiment_label(tokens) == label:
                break
        texts.append(" ".join(tokens))
        labels.append(label)
    return SentimentData(texts, tokenize(texts), np.asarray(labels, np.int64))


def _signed_sum(tokens: list[str]) -> int:
    return sum(
        (1 if t in POSITIVE_WORDS else -1) * (-1 if i > 0 and tokens[i - 1] == NEGATION else 1)
        for i, t in enumerate(tokens)
        if t in SENTIMENT_WORDS
    )


def _draw_sentence(rng: np.random.Generator) -> list[str]:
    length = int(rng.integers(5, SEQ_LEN))  # words, excluding <cls>
    tokens = [FILLER_WORDS[i] for i in rng.integers(0, len(FILLER_WORDS), size=length)]
    n_sent = min(int(rng.integers(1, 4)), length // 2)
    while True:  # sentiment words at least 2 apart, so a "not" fits before each
        slots = np.sort(rng.choice(np.arange(1, length), size=n_sent, replace=False))
        if np.all(np.diff(slots) >= 2):
            break
    for slot in slots:
        words = POSITIVE_WORDS if rng.random() < 0.5 else NEGATIVE_WORDS
        tokens[slot] = words[int(rng.integers(len(words)))]
    if rng.random() < 0.35:  # negate the sentence: "not" before every sentiment word
        for slot in slots:
            tokens[slot - 1] = NEGATION
    return tokens
