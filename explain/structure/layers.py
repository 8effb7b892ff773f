"""The layer table: every module with its type, output shape, parameters and FLOPs.

Works for eager, TorchScript and ``.pt2`` models alike (see
:mod:`explain.structure.module_probe` for how each format is run). FLOPs follow
``torch.utils.flop_counter.FlopCounterMode``: a multiply-add counts 2, so a
``Linear(in, out)`` on a batch of N rows costs ``2·N·in·out``; element-wise
ops (ReLU, norms) count 0. A row's FLOPs and parameters include its
submodules; ``own_parameters`` are the module's direct ones, so they add up to
the model total over all rows.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from explain.loading.model_process import in_model_process
from explain.model import LoadedModel
from explain.structure.measures import ActivationStats, ModuleProbe
from explain.structure.module_probe import probe_modules

if TYPE_CHECKING:
    import pandas as pd

#: inputs used for the table by default (FLOPs and shapes are for this batch).
DEFAULT_MAX_INPUTS = 8


@dataclass
class LayerRow:
    """One module of the model.

    Attributes:
        name: qualified name (``encoder.layers.0.self_attn``); ``""`` is the model.
        type: class name.
        depth: 0 for the model, 1 for its children, ...; container modules
            (``ModuleList``) are not rows and do not count as a level.
        output_shape: shape of the (first tensor) output for the probed
            batch; None when unknown (not run, or TorchScript control flow).
        parameters: parameters of the module and its submodules (shared
            tensors counted once).
        own_parameters: parameters registered directly on this module.
        trainable, frozen: ``parameters`` split by ``requires_grad``.
        flops: FLOPs of the module on the probed batch (submodules included);
            None when unknown.
        flop_share: ``flops`` / the model's FLOPs.
        calls: times the module ran in one forward pass.
    """

    name: str
    type: str
    depth: int
    output_shape: tuple[int, ...] | None
    parameters: int
    own_parameters: int
    trainable: int
    frozen: int
    flops: int | None
    flop_share: float | None
    calls: int = 1


@dataclass
class LayerTable:
    """The layer table of one model on one batch.

    Attributes:
        rows: one per module, in tree order (parents before children).
        total_parameters: distinct parameters of the model.
        total_flops: FLOPs of the whole forward pass on ``batch_size`` inputs.
        batch_size: inputs in the probed batch.
        format: the model's format.
        notes: what could not be measured and why.
        stats: name -> activation statistics (for the activation view).
    """

    rows: list[LayerRow]
    total_parameters: int
    total_flops: int
    batch_size: int
    format: str
    notes: list[str] = field(default_factory=list)
    stats: dict[str, ActivationStats] = field(default_factory=dict)

    @property
    def max_depth(self) -> int:
        return max((r.depth for r in self.rows), default=0)

    def row(self, name: str) -> LayerRow:
        """The row of module ``name`` (KeyError if there is none)."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_records(self) -> list[dict[str, Any]]:
        """Rows as plain dicts (shape as a list), e.g. for a DataFrame or JSON."""
        out = []
        for r in self.rows:
            d = asdict(r)
            d["output_shape"] = list(r.output_shape) if r.output_shape is not None else None
            out.append(d)
        return out


#: modules that only hold other modules (no forward of their own)
CONTAINER_TYPES = ("ModuleList", "ModuleDict")


def module_depth(name: str) -> int:
    """0 for the model (``""``), else the number of dotted parts."""
    return 0 if not name else name.count(".") + 1


def layer_depth(name: str, containers: set[str]) -> int:
    """Depth not counting container modules: ``encoder.layers.0`` is at depth 2 when
    ``encoder.layers`` is a ``ModuleList``."""
    parts = name.split(".") if name else []
    return sum(1 for i in range(len(parts)) if ".".join(parts[: i + 1]) not in containers)


def parent_row_name(name: str, present: set[str]) -> str:
    """The nearest ancestor of ``name`` that is in ``present`` (``""``: the model)."""
    while name:
        name = name.rsplit(".", 1)[0] if "." in name else ""
        if name in present:
            return name
    return ""


def probe_batch(model: LoadedModel, inputs: np.ndarray | torch.Tensor, max_inputs: int | None = DEFAULT_MAX_INPUTS) -> torch.Tensor:
    """The model-ready batch a probe runs on: at most ``max_inputs``, padded to a fixed batch size
    (or, for a vetted user graph, cut to its vetted size and padded to the next vetted size)."""
    x = model.as_tensor(inputs)
    if max_inputs:
        x = x[:max_inputs]
    limit = model.fixed_batch_size or model.max_batch_rows
    if limit:
        x = x[:limit]
        padded = model.padded_rows(x.shape[0])
        if padded and x.shape[0] < padded:
            x = torch.cat([x, x[-1:].expand(padded - x.shape[0], *x.shape[1:])])
    return model.cast_input(x)  # a half-precision graph takes its float inputs so


@in_model_process
def build_layer_table(
    model: LoadedModel, inputs: np.ndarray | torch.Tensor, max_inputs: int | None = DEFAULT_MAX_INPUTS
) -> LayerTable:
    """Run ``model`` once on (up to ``max_inputs`` of) ``inputs`` and tabulate every module.

    Raises:
        IncompatibleInput: inputs that do not fit, or a model that raises.
    """
    x = probe_batch(model, inputs, max_inputs)
    probe = probe_modules(model, x)
    return _table_from_probe(model, probe, int(x.shape[0]))


def describe_layers(model: LoadedModel, inputs: np.ndarray | torch.Tensor) -> list[dict[str, Any]]:
    """Rows ``{name, type, output_shape, parameters, flops, depth}`` for ``inspect --layers``.

    The first row is the whole model (``name == ""``, depth 0). ``flops`` are
    for the given batch (None when the format hides them); ``output_shape`` is
    a list or None.
    """
    table = build_layer_table(model, inputs)
    keys = ("name", "type", "output_shape", "parameters", "flops", "depth")
    return [{k: rec[k] for k in keys} for rec in table.to_records()]


#: the shallowest depth a layer view opens at.
MIN_DEFAULT_DEPTH = 2


def default_depth(rows: Sequence[LayerRow | Mapping[str, Any]]) -> int:
    """The depth a layer view opens at: deep enough to show what the model's repeated blocks are
    made of (one level below the shallowest numbered module that has submodules: a transformer's
    ``encoder.layer.0`` -> its attention and MLP; a ResNet's ``layer1.0`` -> its convolutions),
    at least `MIN_DEFAULT_DEPTH`, at most the table's depth. A Hugging Face model sits under a
    wrapper and a ``model.<base>`` prefix, so its blocks are 3 or 4 levels down, not 1 or 2.

    Args:
        rows: `LayerRow`s, or dicts with ``name`` and ``depth`` (`describe_layers`).
    """
    def get(row: Any, key: str) -> Any:
        return row.get(key) if isinstance(row, Mapping) else getattr(row, key)

    names = [get(r, "name") for r in rows]
    deepest = max((get(r, "depth") for r in rows), default=0)
    parents = {n.rsplit(".", 1)[0] for n in names if n and "." in n}
    blocks = [get(r, "depth") for r, n in zip(rows, names) if n and n.rsplit(".", 1)[-1].isdigit() and n in parents]
    wanted = min(blocks) + 1 if blocks else MIN_DEFAULT_DEPTH
    return min(max(wanted, MIN_DEFAULT_DEPTH), deepest)


def filter_rows(rows: list[LayerRow], max_depth: int | None = None, query: str = "") -> list[LayerRow]:
    """Rows at most ``max_depth`` deep whose name or type contains ``query`` (case-insensitive)."""
    q = query.strip().lower()
    return [
        r for r in rows
        if (max_depth is None or r.depth <= max_depth) and (not q or q in r.name.lower() or q in r.type.lower())
    ]


#: the layer table's output-shape and FLOPs columns: per input (the batch dimension dropped, FLOPs
#: divided by the probed batch), so a table reads the same whichever inputs were probed.
SHAPE_COLUMN = "output shape (per input)"
FLOPS_COLUMN = "FLOPs per input"
#: the columns of the layer table the Overview, the Structure page and a saved run show (`layer_frame`).
LAYER_COLUMNS = ("layer", "type", "depth", SHAPE_COLUMN, "parameters", "trainable", "frozen", FLOPS_COLUMN,
                 "FLOP %", "calls")


def format_shape(shape: Sequence[int] | None) -> str:
    """An output shape without its batch dimension (``16×8×8``; ``—`` when unknown, ``scalar`` for
    one number per input)."""
    if shape is None:
        return "—"
    return "×".join(str(d) for d in shape[1:]) or "scalar"


def layer_frame(table: LayerTable, max_depth: int | None = None, query: str = "") -> pd.DataFrame:
    """The layer table as the pages show it and a saved run stores it: the one table of the
    Overview, the Structure page and a saved Structure / Overview run (`LAYER_COLUMNS`).

    Rows are `filter_rows` of ``table`` down to ``max_depth`` (None: `default_depth`, the depth the
    views open at) matching ``query``; a layer's name is indented by its depth. Output shapes and
    FLOPs are per input (`SHAPE_COLUMN`, `FLOPS_COLUMN`); ``FLOP %`` is the share of the model's.
    """
    import pandas as pd  # not in the model process's imports: only the pages and the report tabulate

    depth = default_depth(table.rows) if max_depth is None else max_depth
    batch = max(table.batch_size, 1)
    rows = filter_rows(table.rows, max_depth=depth, query=query)
    records = [{
        "layer": ("  " * max(r.depth - 1, 0)) + (r.name or "(model)"), "type": r.type, "depth": r.depth,
        SHAPE_COLUMN: format_shape(r.output_shape), "parameters": r.parameters, "trainable": r.trainable,
        "frozen": r.frozen, FLOPS_COLUMN: None if r.flops is None else round(r.flops / batch),
        "FLOP %": None if r.flop_share is None else 100 * r.flop_share, "calls": r.calls,
    } for r in rows]
    frame = pd.DataFrame(records, columns=list(LAYER_COLUMNS))
    frame[FLOPS_COLUMN] = frame[FLOPS_COLUMN].astype("Int64")  # integers, <NA> where unknown
    return frame


def flop_chart_rows(rows: Sequence[LayerRow | Mapping[str, Any]], total_flops: int | None) -> list[dict[str, Any]]:
    """The layers a FLOPs chart lists: ``{name, type, flops, flop_share}`` in ``rows``' order.

    A layer is listed when it has FLOPs (> 0) and no layer below it in ``rows`` does, so no
    FLOP is drawn twice (a parent's bar would repeat its children's) and a layer whose
    submodules never ran on their own (``MultiheadAttention``'s ``out_proj``) keeps its bar.
    The model's own row (``name == ""``) is never listed. The page passes the rows its table
    shows, the report all of them.

    Args:
        rows: `LayerRow`s, or dicts with ``name``, ``type`` and ``flops`` (`describe_layers`).
        total_flops: the model's FLOPs for the same batch; ``flop_share = flops / total_flops``
            (None when the total is unknown or 0).
    """
    def get(row: Any, key: str) -> Any:
        return row.get(key) if isinstance(row, Mapping) else getattr(row, key)

    costly = [r for r in rows if get(r, "name") and (get(r, "flops") or 0) > 0]
    covered: set[str] = set()  # layers with a costly layer below them
    for r in costly:
        parts = get(r, "name").split(".")
        covered.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return [{"name": get(r, "name"), "type": get(r, "type"), "flops": int(get(r, "flops")),
             "flop_share": float(get(r, "flops")) / total_flops if total_flops else None}
            for r in costly if get(r, "name") not in covered]


def _parameter_counts(module) -> dict[str, tuple[int, int, int, int]]:
    """name -> (total, own, trainable, frozen); a shared parameter counts once per module."""
    per_module: dict[str, dict[int, torch.Tensor]] = {}
    own_counts: dict[str, int] = {}
    for name, m in module.named_modules():
        per_module.setdefault(name, {})
        own = [p for _, p in m.named_parameters(recurse=False)]
        own_counts[name] = sum(p.numel() for p in own)
        parts = name.split(".") if name else []
        for i in range(len(parts) + 1):
            bucket = per_module.setdefault(".".join(parts[:i]), {})
            for p in own:
                bucket[id(p)] = p
    counts = {}
    for name, params in per_module.items():
        total = sum(p.numel() for p in params.values())
        trainable = sum(p.numel() for p in params.values() if p.requires_grad)
        counts[name] = (total, own_counts.get(name, 0), trainable, total - trainable)
    return counts


def _table_from_probe(model: LoadedModel, probe: ModuleProbe, batch: int) -> LayerTable:
    module = model.module
    counts = _parameter_counts(module)
    names = list(probe.names) + [n for n in counts if n not in probe.types]
    names = _tree_order(names)
    total_params = counts.get("", (0, 0, 0, 0))[0]
    total_flops = int(probe.total_flops)
    flop_of = _fill_uncalled_flops(names, probe)
    containers = {n for n in names if n and probe.types.get(n, type(_submodule(module, n)).__name__) in CONTAINER_TYPES
                  and counts.get(n, (0, 0))[1] == 0 and n not in probe.stats}
    rows = []
    for name in names:
        if name in containers:  # a namespace, not a layer: its children are listed one level up
            continue
        total, own, trainable, frozen = counts.get(name, (0, 0, 0, 0))
        st = probe.stats.get(name)
        flops = flop_of.get(name)
        rows.append(LayerRow(
            name=name,
            type=probe.types.get(name, type(_submodule(module, name)).__name__),
            depth=layer_depth(name, containers),
            output_shape=st.shape if st else None,
            parameters=int(total),
            own_parameters=int(own),
            trainable=int(trainable),
            frozen=int(frozen),
            flops=None if flops is None else int(flops),
            flop_share=None if flops is None or total_flops == 0 else float(flops) / total_flops,
            calls=st.calls if st else 0,
        ))
    return LayerTable(rows=rows, total_parameters=int(total_params), total_flops=total_flops, batch_size=batch,
                      format=model.format, notes=list(probe.notes), stats=dict(probe.stats))


def _fill_uncalled_flops(names: list[str], probe: ModuleProbe) -> dict[str, int | None]:
    """FLOPs per module; a module that never ran itself gets its children's sum (a
    ``ModuleList``), or None when it has none (a weight used by its parent directly)."""
    if probe.flops is None:
        return {n: (probe.total_flops if n == "" else None) for n in names}
    flops: dict[str, int | None] = {n: probe.flops.get(n) for n in names}
    children: dict[str, list[str]] = {}
    for n in names:
        if n:
            children.setdefault(n.rsplit(".", 1)[0] if "." in n else "", []).append(n)
    for name in sorted(names, key=module_depth, reverse=True):  # children first
        if name == "" or name in probe.stats or flops.get(name) not in (0, None):
            continue
        known = [flops[c] for c in children.get(name, []) if flops.get(c) is not None]
        flops[name] = int(sum(known)) if known else None
    return flops


def _submodule(module, name: str):
    try:
        return module.get_submodule(name) if name else module
    except (AttributeError, RuntimeError):
        return None


def _tree_order(names: list[str]) -> list[str]:
    """Parents before children, siblings in first-seen order."""
    first_seen = {n: i for i, n in reversed(list(enumerate(names)))}
    unique = list(dict.fromkeys(names))

    def key(name: str) -> tuple[int, ...]:
        parts = name.split(".") if name else []
        return tuple(first_seen.get(".".join(parts[: i + 1]), len(names)) for i in range(len(parts)))

    return sorted(unique, key=key)
