"""Regenerate every shipped sample-model file: ``python -m sample_models.train``.

Deterministic on CPU (fixed seeds, deterministic algorithms): same data, same
training order, same weights (single-threaded, so independent of the core count). For each of
``shapes``, ``cancer`` and ``sentiment`` it writes into ``sample_models/<name>/``
the per-epoch ``train_log.csv``, checkpoints, final weights in every format
(see `sample_models.artefacts`), ``spec.json``, ``samples.npz``, raw upload files and
the Overview's first view (``overview_first_view.npz``, `write_first_view`) and curves
(``overview_curves.json``, `write_first_curves`), then prints
each model's test accuracy. ``keycopy``, the causal LM, is built by
`sample_models.keycopy` (a Hugging Face folder as a zip, its greedy accuracy printed).
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from explain.loading.architectures import build_architecture, default_config
from explain.spec import InputSpec
from sample_models import artefacts, data, keycopy

SEED = 0
N_SAMPLES = 32  # held-out, model-ready inputs shipped in samples.npz
N_PNGS = 8
ROOT = Path(__file__).resolve().parent

Split = tuple[torch.Tensor, torch.Tensor]  # inputs [N, ...], labels [N]


@dataclass
class Prepared:
    """Tensors for training plus what gets shipped next to the model."""

    train: Split
    val: Split
    test: Split
    spec: InputSpec
    samples: dict[str, np.ndarray]  # inputs, labels (+ masks)
    write_raw: Callable[[Path], None]  # raw upload files for the samples


@dataclass(frozen=True)
class Recipe:
    name: str
    architecture: str
    prepare: Callable[[], Prepared]
    epochs: int
    lr: float
    milestones: tuple[int, ...]  # epochs after which the LR is multiplied by gamma
    batch_size: int
    checkpoint_epochs: tuple[int, ...]
    gamma: float = 0.1
    weight_decay: float = 0.0
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    config: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------
# data preparation per sample
# --------------------------------------------------------------------------
def prepare_shapes() -> Prepared:
    mean, std = [0.5] * 3, [0.5] * 3
    norm = lambda x: torch.from_numpy((x - 0.5) / 0.5).float()  # [N, 3, 32, 32] in [-1, 1]
    train, val, test = (data.make_shapes(n, seed) for n, seed in ((2000, 1), (400, 2), (400, 3)))
    pick = np.concatenate([np.flatnonzero(test.labels == k)[: N_SAMPLES // 4] for k in range(4)])
    pick.sort()
    spec = InputSpec("image", (3, 32, 32), mean=mean, std=std, class_names=list(data.SHAPE_CLASSES), name="shapes")

    def write_raw(directory: Path) -> None:
        (directory / "samples").mkdir(exist_ok=True)
        for old in (directory / "samples").glob("*.png"):
            old.unlink()
        for j, i in enumerate(pick[:N_PNGS]):
            pixels = np.round(test.images[i].transpose(1, 2, 0) * 255).astype(np.uint8)  # [32, 32, 3]
            label = data.SHAPE_CLASSES[test.labels[i]]
            Image.fromarray(pixels).save(directory / "samples" / f"{j:02d}_{label}.png")

    return Prepared(
        (norm(train.images), torch.from_numpy(train.labels)),
        (norm(val.images), torch.from_numpy(val.labels)),
        (norm(test.images), torch.from_numpy(test.labels)),
        spec,
        {"inputs": norm(test.images[pick]).numpy(), "labels": test.labels[pick], "masks": test.masks[pick]},
        write_raw,
    )


def prepare_cancer() -> Prepared:
    d = data.load_cancer(SEED)
    as_split = lambda x, y: (torch.from_numpy(d.standardise(x)), torch.from_numpy(y))
    spec = InputSpec(
        "tabular", (30,), mean=d.mean.tolist(), std=d.std.tolist(),
        class_names=d.class_names, feature_names=d.feature_names, name="cancer",
    )
    raw = d.x_test[:N_SAMPLES]

    def write_raw(directory: Path) -> None:
        header = ",".join(d.feature_names)
        np.savetxt(directory / "samples.csv", raw, delimiter=",", header=header, comments="", fmt="%.6g")

    return Prepared(
        as_split(d.x_train, d.y_train), as_split(d.x_val, d.y_val), as_split(d.x_test, d.y_test), spec,
        {"inputs": d.standardise(raw), "labels": d.y_test[:N_SAMPLES]},
        write_raw,
    )


def prepare_sentiment() -> Prepared:
    train, val, test = (data.make_sentiment(n, seed) for n, seed in ((4000, 11), (500, 12), (1000, 13)))
    as_split = lambda s: (torch.from_numpy(s.ids), torch.from_numpy(s.labels))
    spec = InputSpec(
        "text", (data.SEQ_LEN,), dtype="int64", class_names=["negative", "positive"],
        vocabulary=list(data.VOCABULARY), cls_token=data.CLS, lowercase=True, name="sentiment",
    )

    def write_raw(directory: Path) -> None:
        (directory / "samples.txt").write_text("\n".join(test.texts[:N_SAMPLES]) + "\n")

    return Prepared(
        as_split(train), as_split(val), as_split(test), spec,
        {"inputs": test.ids[:N_SAMPLES], "labels": test.labels[:N_SAMPLES]},
        write_raw,
    )


def flip_images(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip of half the batch (every class is mirror-symmetric)."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("shapes", "shapes_resnet", prepare_shapes, epochs=10, lr=3e-3, milestones=(7,),
               batch_size=64, checkpoint_epochs=(1, 4, 7, 10), weight_decay=1e-4, augment=flip_images),
        Recipe("cancer", "tabular_mlp", prepare_cancer, epochs=15, lr=1e-2, milestones=(10,),
               batch_size=32, checkpoint_epochs=(1, 5, 10, 15)),
        Recipe("sentiment", "text_transformer", prepare_sentiment, epochs=12, lr=3e-3, milestones=(9,),
               batch_size=64, checkpoint_epochs=(1, 4, 8, 12), weight_decay=1e-2,
               config={"vocab_size": len(data.VOCABULARY), "max_len": data.SEQ_LEN}),
    )
}


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 512) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode."""
    model.eval()
    x, y = split
    logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def train(recipe: Recipe, prepared: Prepared, directory: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Train one sample, writing the log and checkpoints as it goes."""
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    config = {**default_config(recipe.architecture), **recipe.config}
    model = build_architecture(recipe.architecture, config)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(recipe.milestones), gamma=recipe.gamma)
    x, y = prepared.train
    history: list[dict[str, float]] = []
    for old in (directory / "checkpoints").glob("epoch_*.pt"):
        old.unlink()
    for epoch in range(1, recipe.epochs + 1):
        lr = opt.param_groups[0]["lr"]
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total_loss, correct = 0.0, 0
        for start in range(0, len(x), recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            xb, yb = x[idx], y[idx]
            if recipe.augment is not None:
                xb = recipe.augment(xb, gen)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total_loss += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        val_loss, val_acc = evaluate(model, prepared.val)
        history.append({
            "epoch": epoch, "train_loss": total_loss / len(x), "val_loss": val_loss,
            "train_acc": correct / len(x), "val_acc": val_acc, "lr": lr,
        })
        sched.step()
        if epoch in recipe.checkpoint_epochs:
            path = directory / "checkpoints" / f"epoch_{epoch:02d}.pt"
            artefacts.save_checkpoint(path, model, epoch, history, recipe.architecture, config, prepared.spec)
    artefacts.write_log(directory / "train_log.csv", history)
    return model.eval(), config


def build_sample(recipe: Recipe, root: Path = ROOT) -> dict[str, float]:
    """Train ``recipe`` and write all of its files; returns accuracies and seconds."""
    start = time.perf_counter()
    directory = root / recipe.name
    directory.mkdir(parents=True, exist_ok=True)
    prepared = recipe.prepare()
    model, config = train(recipe, prepared, directory)
    spec = prepared.spec
    artefacts.save_spec(directory / "spec.json", spec)
    artefacts.save_safetensors(directory / "model.safetensors", model, recipe.architecture, config, spec)
    artefacts.save_torchscript(directory / "model.torchscript.pt", model, spec)
    example = torch.from_numpy(prepared.samples["inputs"][:4])
    artefacts.save_exports(directory, model, example, spec)
    np.savez_compressed(directory / "samples.npz", **prepared.samples)
    prepared.write_raw(directory)
    _, test_acc = evaluate(model, prepared.test)
    samples = (torch.from_numpy(prepared.samples["inputs"]), torch.from_numpy(prepared.samples["labels"]))
    _, sample_acc = evaluate(model, samples)
    write_first_view(directory, recipe.name)
    write_first_curves(directory)
    return {"test_acc": test_acc, "sample_acc": sample_acc, "seconds": time.perf_counter() - start}


def write_first_view(directory: Path, name: str) -> None:
    """The Overview's first view of the sample (input #0, the default method, `OVERVIEW_STEPS` steps), computed
    by the shipped ``model.safetensors`` and saved beside it (`explain.report.first_view.FIRST_VIEW_FILE`), so a
    new workspace's first server draws its map before torch is imported (`ui.first_paint`)."""
    from explain.loading.loader import load_model
    from explain.report import overview
    from explain.report.first_view import FIRST_VIEW_FILE

    model = load_model(directory / "model.safetensors")
    model.name = name
    with np.load(directory / "samples.npz", allow_pickle=False) as npz:
        x = npz["inputs"][:1]
    record = overview.first_view_record(name, 1, model, x, 0)
    overview.first_view_of(record, model, x).write(directory / FIRST_VIEW_FILE)


def write_first_curves(directory: Path) -> None:
    """The Overview's training curves and findings of the sample's ``train_log.csv``, saved beside it
    (`explain.report.first_curves.FIRST_CURVES_FILE`), so a new server's first paint draws them without pandas;
    alone (the figures changed, the weights did not): ``python -c "from sample_models.train import *;
    [write_first_curves(ROOT / n) for n in RECIPES]"``."""
    from explain.report.first_curves import FIRST_CURVES_FILE
    from explain.report.first_curves import write_first_curves as write

    write(directory / "train_log.csv", directory / FIRST_CURVES_FILE)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = (*RECIPES, keycopy.NAME)
    parser.add_argument("names", nargs="*", help=f"samples to rebuild: {', '.join(names)} (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT, help="root folder (default: the package)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(names))
    if unknown:
        parser.error(f"unknown sample(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    torch.use_deterministic_algorithms(True)
    # One thread: the same floating-point sums on every machine, and these tiny
    # models train several times faster than with 2 threads on a shared CPU.
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    results = {name: build_sample(RECIPES[name], args.out) if name in RECIPES else keycopy.build_keycopy(args.out)
               for name in (args.names or names)}
    for name, r in results.items():
        print(f"{name:10s} test_acc={r['test_acc']:.4f} sample_acc={r['sample_acc']:.4f} seconds={r['seconds']:.1f}")
    print(f"total seconds={time.perf_counter() - t0:.1f} threads={torch.get_num_threads()}")


if __name__ == "__main__":
    main()
