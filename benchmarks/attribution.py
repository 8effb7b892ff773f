"""Attribution throughput: Glassbox's engine vs the raw model, Captum and shap.

Three benchmarks, each in one process with the tools interleaved and the
median of repeats reported:

- B1: a ResNet-50-sized residual CNN at 224², integrated gradients (50
  steps) on 32 inputs;
- B2: a VGG-style CNN at 64², DeepLift-SHAP against 32 background samples
  on 32 inputs;
- B3: a 12-layer, 768-wide transformer encoder at sequence length 128,
  layer integrated gradients (50 steps) on the token embeddings.
- Q1: quality metrics on the B1 model and 32 inputs, on the same saliency maps:
  Glassbox deletion + insertion (24 steps; with its random-attribution curves, twice the
  forward passes, and without them) vs Quantus's ``PixelFlipping`` + ``RegionPerturbation``
  (24 steps each, no chance level; the ratio is against Glassbox without the random curves), and
  Glassbox infidelity vs Captum's ``infidelity`` at its best ``max_examples_per_batch``
  (10 perturbations per input). Rows: seconds and the measured ratio (other tool / Glassbox).

Rows: the *ceiling* (the model's own batched forward + input-gradient over the
same rows, fp32 and reduced precision, at the best batch size), Glassbox,
Captum at its best ``internal_batch_size`` (or input chunking), Captum with
its defaults, and shap where it applies (or ``failed: reason``). ``evals/s``
counts model rows differentiated per second: inputs x steps (IG) or
inputs x background rows (DeepLift-SHAP). ``--quick`` runs small versions in
about a minute on a 2-core CPU.

    python benchmarks/attribution.py --quick [--json rows.json] [--device cpu]
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explain import InputSpec, LoadedModel  # noqa: E402
from explain.output.baselines import text_reference  # noqa: E402
from explain.output.methods import get_method  # noqa: E402


# --------------------------------------------------------------------------
# architectures (no torchvision)
# --------------------------------------------------------------------------
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):  # [N, cin, H, W] -> [N, 4w, H/s, W/s]
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.down is None else self.down(x)
        return self.relu(out)


class ResNetLike(nn.Module):
    """ResNet-50 layout: stem, bottleneck stages ``blocks``, global pool, linear."""

    def __init__(self, blocks=(3, 4, 6, 3), base: int = 64, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], base
        for i, n in enumerate(blocks):
            width = base * 2**i
            for j in range(n):
                layers.append(Bottleneck(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * 4
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):  # [N, 3, H, W] -> [N, classes]
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class VGGLike(nn.Module):
    """VGG-style: (conv-ReLU)x2 + max-pool stages, then two linear layers. Separate ReLU modules."""

    def __init__(self, widths=(64, 128, 256, 512), size: int = 64, classes: int = 10):
        super().__init__()
        layers, cin = [], 3
        for w in widths:
            layers += [nn.Conv2d(cin, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
                       nn.MaxPool2d(2)]
            cin = w
        self.features = nn.Sequential(*layers)
        side = size // 2 ** len(widths)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(cin * side * side, 512), nn.ReLU(),
                                        nn.Linear(512, classes))

    def forward(self, x):  # [N, 3, S, S] -> [N, classes]
        return self.classifier(self.features(x))


class Encoder(nn.Module):
    """BERT-base-sized encoder classifier reading out token 0."""

    def __init__(self, vocab=8000, seq=128, d=768, heads=12, layers=12, ff=3072, classes=2):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(1, seq, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, ids):  # [N, L] -> [N, classes]
        x = self.embedding(ids) + self.pos[:, : ids.shape[1]]
        return self.head(self.encoder(x, src_key_padding_mask=ids == 0)[:, 0])


# --------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    model: LoadedModel
    x: np.ndarray
    method: str
    params: dict
    per_input: int  # rows differentiated per input (steps or background rows)
    background: np.ndarray | None = None
    batch_sweep: tuple[int, ...] = (8, 32, 128)
    extra: dict = field(default_factory=dict)


def build_cases(quick: bool, device: torch.device) -> list[Case]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = 4 if quick else 32
    steps = 16 if quick else 50

    def loaded(module, spec, name):
        module = module.eval().to(device)
        return LoadedModel(module=module, format="safetensors", sha256=name, spec=spec, device=device, name=name)

    size1 = 64 if quick else 224
    res = ResNetLike((1, 1, 1, 1), 16, 100) if quick else ResNetLike()
    b1 = Case("B1 resnet50-like IG", loaded(res, InputSpec("image", (3, size1, size1)), "b1"),
              rng.normal(size=(n, 3, size1, size1)).astype(np.float32), "integrated_gradients",
              {"steps": steps, "baseline": "zero", "tolerance": 0.0}, steps, batch_sweep=(16, 64) if quick else (8, 16, 32, 64))

    size2 = 32 if quick else 64
    bg_n = 4 if quick else 32
    vgg = VGGLike((8, 16, 32, 64), size2) if quick else VGGLike(size=size2)
    b2 = Case("B2 vgg DeepLift-SHAP", loaded(vgg, InputSpec("image", (3, size2, size2)), "b2"),
              rng.normal(size=(n, 3, size2, size2)).astype(np.float32), "deeplift_shap",
              {"background_size": bg_n}, bg_n,
              background=rng.normal(size=(bg_n, 3, size2, size2)).astype(np.float32),
              batch_sweep=(1, 4) if quick else (1, 4, 16))

    seq = 32 if quick else 128
    enc = Encoder(2000, seq, 64, 4, 2, 128) if quick else Encoder()
    ids = rng.integers(3, 2000 if quick else 8000, size=(n, seq))
    ids[:, 0] = 2
    ids[:, seq * 3 // 4:] = 0
    b3 = Case("B3 transformer layer-IG", loaded(enc, InputSpec("text", (seq,), dtype="int64"), "b3"),
              ids.astype(np.int64), "layer_integrated_gradients", {"steps": steps, "reference": "padding"},
              steps, batch_sweep=(16, 64) if quick else (8, 16, 32, 64))
    return [b1, b2, b3]


# --------------------------------------------------------------------------
# tools: each returns (attributions [N, ...] as numpy or None, seconds)
# --------------------------------------------------------------------------
def timed(fn: Callable[[], np.ndarray | None], device: torch.device) -> tuple[np.ndarray | None, float]:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def ceiling(case: Case, batch: int, precision: str) -> Callable[[], None]:
    """The model's raw forward + input gradient over the same number of rows.

    For DeepLift-SHAP each (input, background) pair also needs the reference's
    forward pass, so its ceiling adds a no-grad forward per row.
    """
    model = case.model
    x = model.as_tensor(case.x)
    rows = len(case.x) * case.per_input
    text = model.modality == "text"
    emb = model.module.embedding if text else None
    dtype = torch.bfloat16 if precision == "bf16" else None
    reference_pass = case.method == "deeplift_shap"

    def run():
        done = 0
        while done < rows:
            b = min(batch, rows - done)
            idx = torch.arange(done, done + b, device=x.device) % len(x)
            with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
                if reference_pass:
                    with torch.no_grad():
                        model.module(x[idx])
                if text:
                    points = emb(x[idx]).detach().requires_grad_(True)
                    handle = emb.register_forward_hook(lambda m, i, o, points=points: points)
                    try:
                        out = model.module(x[idx])
                    finally:
                        handle.remove()
                else:
                    points = x[idx].detach().requires_grad_(True)
                    out = model.module(points)
            torch.autograd.grad(out[:, 0].float().sum(), points)
            done += b
        return None

    return run


def glassbox(case: Case, precision: str = "fp32") -> Callable[[], np.ndarray]:
    """Glassbox's method with the same explicit targets Captum gets."""
    method = get_method(case.method)
    extra = {"background": case.background} if case.background is not None else {}
    target = case.model.predict_logits(case.x).argmax(1)

    def run():
        return method.explain(case.model, case.x, target=target, use_cache=False,
                              device=str(case.model.device.type), precision=precision,
                              **case.params, **extra).values

    return run


def captum(case: Case, batch: int | None) -> Callable[[], np.ndarray]:
    from captum.attr import DeepLiftShap, IntegratedGradients, LayerIntegratedGradients

    model = case.model
    x = model.as_tensor(case.x)
    t = torch.as_tensor(model.predict_logits(x).argmax(1), device=x.device)
    steps = case.params.get("steps")

    if case.method == "integrated_gradients":
        def run():
            return IntegratedGradients(model.module).attribute(
                x, baselines=torch.zeros_like(x), target=t, n_steps=steps, internal_batch_size=batch
            ).detach().cpu().numpy()
    elif case.method == "layer_integrated_gradients":
        ref = text_reference(x, model.spec, "pad", keep_first="input")

        def run():
            lig = LayerIntegratedGradients(model.module, model.module.embedding)
            return lig.attribute(x, baselines=ref, target=t, n_steps=steps,
                                 internal_batch_size=batch).sum(-1).detach().cpu().numpy()
    else:  # DeepLiftShap has no internal batching: chunk the inputs (each chunk x every background row)
        bg = torch.as_tensor(case.background, device=x.device)
        chunk = batch or len(x)

        def run():
            outs = [DeepLiftShap(model.module).attribute(x[i:i + chunk], baselines=bg, target=t[i:i + chunk])
                    for i in range(0, len(x), chunk)]
            return torch.cat(outs).detach().cpu().numpy()
    return run


def shap_tool(case: Case) -> tuple[str, Callable[[], np.ndarray]] | None:
    """shap on a copy of the model: a failing DeepExplainer leaves its hooks behind."""
    import copy

    import shap

    model = copy.copy(case.model)
    model.module = copy.deepcopy(case.model.module)
    x = model.as_tensor(case.x)
    if case.method == "deeplift_shap":
        bg = torch.as_tensor(case.background, device=x.device)

        def run():
            values, _ = shap.DeepExplainer(model.module, bg).shap_values(x, ranked_outputs=1, check_additivity=False)
            return np.asarray(values)[..., 0]
        return "shap DeepExplainer", run
    if case.method == "integrated_gradients":
        def run():
            explainer = shap.GradientExplainer(model.module, torch.zeros_like(x[:1]), batch_size=32)
            values, _ = explainer.shap_values(x, nsamples=case.per_input, ranked_outputs=1, rseed=0)
            return np.asarray(values)[..., 0]
        return "shap GradientExplainer", run

    def run():
        return np.asarray(shap.DeepExplainer(model.module, x[:2]).shap_values(x, ranked_outputs=1)[0])
    return "shap DeepExplainer", run


def completeness(case: Case, values: np.ndarray | None) -> float | None:
    """Largest relative |Σ values − (f(x) − E f(b))| over inputs, for the case's reference."""
    if values is None or values.shape[:2] != case.x.shape[:2]:
        return None
    model = case.model
    x = model.as_tensor(case.x)
    logits = model.predict_logits(x)
    t = logits.argmax(1)
    fx = logits[np.arange(len(t)), t]
    if case.method == "integrated_gradients":
        fb = model.predict_logits(torch.zeros_like(x))[np.arange(len(t)), t]
    elif case.method == "deeplift_shap":
        fb = model.predict_logits(case.background)[:, t].mean(0)
    else:
        emb = model.module.embedding
        ref_points = emb(text_reference(x, model.spec, "pad", keep_first="input")).detach()
        handle = emb.register_forward_hook(lambda m, i, o: ref_points)
        try:
            fb = model.predict_logits(x)[np.arange(len(t)), t]
        finally:
            handle.remove()
    total = values.reshape(len(t), -1).sum(1)
    return float(np.max(np.abs(total - (fx - fb)) / np.maximum(np.abs(fx - fb), 1e-6)))


# --------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------
def attempt(fn: Callable[[], np.ndarray | None], device) -> tuple[np.ndarray | None, float | str]:
    try:
        return timed(fn, device)
    except Exception as exc:  # noqa: BLE001 - reported as a row
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return None, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:90]}"


def run_case(case: Case, repeats: int, device: torch.device, skip_defaults: bool) -> list[dict]:
    rows_total = len(case.x) * case.per_input
    reduced = "bf16"
    tools: dict[str, Callable] = {}
    # pick the best batch for the ceiling and Captum with one untimed pass each (warm-up included)
    best = {}
    for label, make in (("ceiling", lambda b: ceiling(case, b, "fp32")), ("captum", lambda b: captum(case, b))):
        timings = {}
        for b in case.batch_sweep:
            secs = [attempt(make(b), device)[1] for _ in range(2)]
            if all(isinstance(sec, float) for sec in secs):
                timings[b] = min(secs)
        best[label] = min(timings, key=timings.get) if timings else case.batch_sweep[0]
    tools["ceiling fp32"] = ceiling(case, best["ceiling"], "fp32")
    tools[f"ceiling {reduced}"] = ceiling(case, best["ceiling"], reduced)
    tools["glassbox fp32"] = glassbox(case, "fp32")
    if device.type == "cuda":
        tools["glassbox auto"] = glassbox(case, "auto")
    tools[f"captum tuned (batch {best['captum']})"] = captum(case, best["captum"])
    if not skip_defaults:
        tools["captum defaults"] = captum(case, None)
    shap_entry = shap_tool(case)
    if shap_entry:
        tools[shap_entry[0]] = shap_entry[1]

    times: dict[str, list[float]] = {k: [] for k in tools}
    failures: dict[str, str] = {}
    outputs: dict[str, np.ndarray | None] = {}
    glassbox(case)()  # warm-up
    labels = list(tools)
    for r in range(repeats):  # interleaved, the order rotated each repeat: a tool's time depends on the one
        # before it (the one right after the bf16 ceiling re-faults the memory that run gave back: ~3000 page
        # faults, +25 % on B3 at 1 thread), so each tool follows each other one in turn
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            fn = tools[label]
            if label in failures:
                continue
            out, sec = attempt(fn, device)
            if isinstance(sec, str):
                failures[label] = sec
                continue
            times[label].append(sec)
            outputs.setdefault(label, out)
    median = {k: statistics.median(v) for k, v in times.items() if v}
    ceiling_rate = rows_total / median["ceiling fp32"] if "ceiling fp32" in median else None
    captum_key = next(k for k in tools if k.startswith("captum tuned"))
    captum_rate = rows_total / median[captum_key] if captum_key in median else None
    rows = []
    for label in tools:
        if label in failures:
            rows.append({"benchmark": case.name, "tool": label, "device": device.type, "evals_per_s": None,
                         "ratio_to_ceiling": None, "ratio_to_captum": None, "completeness_error": None,
                         "status": failures[label]})
            continue
        rate = rows_total / median[label]
        rows.append({
            "benchmark": case.name, "tool": label, "device": device.type, "evals_per_s": rate,
            "ratio_to_ceiling": rate / ceiling_rate if ceiling_rate else None,
            "ratio_to_captum": rate / captum_rate if captum_rate else None,
            "completeness_error": completeness(case, outputs.get(label)), "status": "ok",
            "seconds": median[label],
        })
    return rows


def print_table(rows: list[dict]) -> None:
    head = f"{'benchmark':26} {'tool':28} {'evals/s':>9} {'/ceiling':>9} {'/captum':>8} {'complete.':>10}"
    print(head)
    print("-" * len(head))

    def fmt(v, spec):
        return format(v, spec) if isinstance(v, float) else "-"

    for r in rows:
        if r["status"] != "ok":
            print(f"{r['benchmark']:26} {r['tool']:28} {r['status']}")
            continue
        print(f"{r['benchmark']:26} {r['tool']:28} {fmt(r['evals_per_s'], '9.1f')} "
              f"{fmt(r['ratio_to_ceiling'], '9.2f')} {fmt(r['ratio_to_captum'], '8.2f')} "
              f"{fmt(r['completeness_error'], '10.1e')}")


# --------------------------------------------------------------------------
# Q1: quality metrics
# --------------------------------------------------------------------------
QUALITY_STEPS = 24  # Quantus flips C*H*W values, features_in_step must divide H*W: 24 steps = H*W/8 per step


def run_quality(quick: bool, repeats: int, device: torch.device) -> list[dict]:
    """Glassbox deletion + insertion and infidelity vs Quantus / Captum on the same maps."""
    import math

    from explain.output.metrics import get_metric

    torch.manual_seed(0)
    size = 64 if quick else 224
    res = ResNetLike((1, 1, 1, 1), 16, 100) if quick else ResNetLike()
    model = LoadedModel(module=res.eval().to(device), format="safetensors", sha256="q1",
                        spec=InputSpec("image", (3, size, size)), device=device, name="q1")
    x = np.random.default_rng(0).normal(size=(32, 3, size, size)).astype(np.float32)
    attr = get_method("saliency").explain(model, x, device=device.type, use_cache=False)  # the maps every tool judges
    y = attr.target
    # [N, C, H, W]: the pixel map on every channel (Quantus's features_in_step must divide its size)
    a = np.broadcast_to(attr.values.sum(axis=1, keepdims=True), x.shape).astype(np.float32)
    steps = QUALITY_STEPS
    tools: dict[str, Callable[[], object]] = {}

    def glassbox_curves():
        for name in ("deletion", "insertion"):
            get_metric(name).evaluate(model, attr, steps=steps, substrate="zero", device=device.type,
                                      use_cache=False)

    def glassbox_curves_alone():
        for name in ("deletion", "insertion"):
            get_metric(name).evaluate(model, attr, steps=steps, substrate="zero", random=False, device=device.type,
                                      use_cache=False)

    tools["glassbox deletion+insertion"] = glassbox_curves
    tools["glassbox deletion+insertion, no random curve"] = glassbox_curves_alone
    try:
        import quantus

        flip = quantus.PixelFlipping(features_in_step=3 * size * size // steps, perturb_baseline="black",
                                     disable_warnings=True, display_progressbar=False)
        region = quantus.RegionPerturbation(patch_size=size // 8, regions_evaluation=steps,
                                            disable_warnings=True, display_progressbar=False)

        def quantus_curves():
            for metric in (flip, region):  # curves (its AUC helper calls np.trapz, gone in numpy 2.4)
                metric(model=model.module, x_batch=x, y_batch=y, a_batch=a.copy(), device=device.type,
                       batch_size=64, softmax=True)

        tools["quantus PixelFlipping+RegionPerturbation"] = quantus_curves
    except ImportError as exc:
        tools["quantus PixelFlipping+RegionPerturbation"] = lambda exc=exc: (_ for _ in ()).throw(exc)

    samples = 10
    tools["glassbox infidelity"] = lambda: get_metric("infidelity").evaluate(
        model, attr, samples=samples, normalize=False, device=device.type, use_cache=False)

    def captum_infidelity(batch: int):
        from captum.metrics import infidelity

        xt = torch.as_tensor(x, device=device)
        vt = torch.as_tensor(attr.values, device=device).float()

        def perturb(inputs):
            noise = torch.randn_like(inputs) * 0.1
            return noise, inputs - noise

        return lambda: infidelity(model.module, perturb, xt, vt, target=torch.as_tensor(y, device=device),
                                  n_perturb_samples=samples, max_examples_per_batch=batch)

    sweep = {b: min(attempt(captum_infidelity(b), device)[1] for _ in range(1)) for b in (4, 16, 64)}
    timed_ok = {b: t for b, t in sweep.items() if isinstance(t, float)}
    best = min(timed_ok, key=timed_ok.get) if timed_ok else 4
    tools[f"captum infidelity (max_examples_per_batch {best})"] = captum_infidelity(best)

    times: dict[str, list[float]] = {k: [] for k in tools}
    failures: dict[str, str] = {}
    for _ in range(repeats):  # interleaved
        for label, fn in tools.items():
            if label in failures:
                continue
            _, sec = attempt(fn, device)
            if isinstance(sec, str):
                failures[label] = sec
            else:
                times[label].append(sec)
    median = {k: statistics.median(v) for k, v in times.items() if v}
    pairs = {"quantus PixelFlipping+RegionPerturbation": "glassbox deletion+insertion, no random curve"}
    pairs.update({k: "glassbox infidelity" for k in tools if k.startswith("captum infidelity")})
    rows = []
    for label in tools:
        ours = pairs.get(label)
        ratio = median[label] / median[ours] if label in median and ours in median else None
        rows.append({"benchmark": f"Q1 quality {size}² x32", "tool": label, "device": device.type,
                     "seconds": median.get(label), "ratio_vs_glassbox": ratio,
                     "status": failures.get(label, "ok"), "steps": steps if "infidelity" not in label else None,
                     "features_per_step": math.ceil(size * size / steps)})
    return rows


def print_quality(rows: list[dict]) -> None:
    head = f"{'benchmark':22} {'tool':52} {'seconds':>9} {'other/glassbox':>15}"
    print()
    print(head)
    print("-" * len(head))
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['benchmark']:22} {r['tool']:52} {r['status']}")
            continue
        ratio = f"{r['ratio_vs_glassbox']:15.1f}" if r["ratio_vs_glassbox"] else f"{'-':>15}"
        print(f"{r['benchmark']:22} {r['tool']:52} {r['seconds']:9.2f} {ratio}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models: about a minute on a 2-core CPU")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--only", default=None, help="comma-separated subset: B1,B2,B3,Q1")
    parser.add_argument("--json", default=None, help="write the rows to this file")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 gives stable numbers on a shared machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    repeats = args.repeats or (7 if args.quick else 5)
    rows = []
    for case in build_cases(args.quick, device):
        if args.only and case.name.split()[0] not in args.only.split(","):
            continue
        # Captum's defaults put every (input x step) row in one batch: skip where that cannot fit.
        skip = not args.quick and case.method != "deeplift_shap" and device.type == "cpu"
        rows += run_case(case, repeats, device, skip_defaults=skip)
        if skip:
            rows.append({"benchmark": case.name, "tool": "captum defaults", "device": device.type,
                         "evals_per_s": None, "ratio_to_ceiling": None, "ratio_to_captum": None,
                         "completeness_error": None,
                         "status": "skipped: all rows in one batch exceed this machine's memory"})
    print_table(rows)
    if not args.only or "Q1" in args.only.split(","):
        quality_rows = run_quality(args.quick, repeats if not args.quick else 3, device)
        print_quality(quality_rows)
        rows += quality_rows
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
