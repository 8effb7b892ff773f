"""The module hierarchy as a graphviz DOT graph, collapsed to a chosen depth.

A model with thousands of modules stays readable: only modules up to
``max_depth`` are drawn, a collapsed node says how many submodules it hides,
and at most ``max_nodes`` nodes are drawn in all. Nodes are coloured by
their share of the model's FLOPs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from explain.structure.layers import LayerRow, LayerTable, filter_rows, parent_row_name

#: drawn nodes at most; beyond this the graph becomes unreadable (and slow) in a browser.
MAX_NODES = 250


@dataclass
class ModuleGraph:
    """A DOT source and what it shows.

    Attributes:
        dot: graphviz source (``digraph``).
        shown: module names drawn, in tree order.
        hidden: modules not drawn (deeper than the chosen depth or over the node limit).
        truncated: True when ``max_nodes`` cut the graph short.
    """

    dot: str
    shown: list[str]
    hidden: int
    truncated: bool


def _label(row: LayerRow, hidden_children: int) -> str:
    name = row.name or "(model)"
    parts = name.split(".")
    short = ".".join(parts[-2:]) if row.name and parts[-1].isdigit() else parts[-1]  # "layers.0", not "0"
    lines = [f"{short}: {row.type}"]
    facts = []
    if row.output_shape is not None:
        facts.append("×".join(str(d) for d in row.output_shape))
    facts.append(f"{format_count(row.parameters)} params")
    if row.flops is not None:
        facts.append(f"{100 * (row.flop_share or 0):.0f}% FLOPs")
    lines.append(" · ".join(facts))
    if hidden_children:
        lines.append(f"+{hidden_children} submodules")
    return "\\n".join(_escape(line) for line in lines)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _colour(share: float | None) -> str:
    """White to orange by FLOP share (grey when unknown)."""
    if share is None:
        return "#eeeeee"
    s = max(0.0, min(1.0, share)) ** 0.5
    r, g, b = 255, int(255 - s * (255 - 140)), int(255 - s * 255)
    return f"#{r:02x}{g:02x}{b:02x}"


def format_count(n: int | float | None) -> str:
    """1234 -> ``1.2k``, 5e6 -> ``5.0M``."""
    if n is None:
        return "?"
    n = float(n)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{int(n)}"


def build_module_graph(
    table: LayerTable, max_depth: int = 2, selected: str | None = None, max_nodes: int = MAX_NODES
) -> ModuleGraph:
    """DOT graph of the module tree down to ``max_depth``.

    Args:
        table: the layer table.
        max_depth: deepest level drawn (0 = the model only).
        selected: a module name to highlight.
        max_nodes: cap on drawn nodes.
    """
    rows = filter_rows(table.rows, max_depth=max_depth)
    truncated = len(rows) > max_nodes
    rows = rows[:max_nodes]
    shown = {r.name for r in rows}
    present = {r.name for r in table.rows}
    parent = {r.name: parent_row_name(r.name, present) for r in table.rows if r.name}
    descendants = _descendant_counts(table.rows)
    lines = [
        "digraph modules {",
        '  graph [rankdir=LR, nodesep=0.08, ranksep=0.4, fontname="Helvetica"];',
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
        "  edge [arrowsize=0.5, color=\"#888888\"];",
    ]
    ids = {r.name: f"n{i}" for i, r in enumerate(rows)}
    for r in rows:
        shown_children = sum(1 for n in shown if n and parent[n] == r.name)
        hidden_below = descendants.get(r.name, 0) - _shown_descendants(r.name, shown)
        pen = ', penwidth=3, color="#1f77b4"' if selected is not None and r.name == selected else ""
        lines.append(f'  {ids[r.name]} [label="{_label(r, hidden_below if shown_children == 0 else 0)}", '
                     f'fillcolor="{_colour(r.flop_share)}"{pen}];')
    for r in rows:
        if r.name and parent[r.name] in ids:
            lines.append(f"  {ids[parent[r.name]]} -> {ids[r.name]};")
        elif r.name:  # parent not drawn (over the cap): hang it on the nearest drawn ancestor
            anc = _nearest_shown_ancestor(r.name, ids)
            if anc is not None:
                lines.append(f"  {ids[anc]} -> {ids[r.name]} [style=dashed];")
    lines.append("}")
    return ModuleGraph(dot="\n".join(lines), shown=[r.name for r in rows],
                       hidden=len(table.rows) - len(rows), truncated=truncated)


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _nearest_shown_ancestor(name: str, ids: dict[str, str]) -> str | None:
    while name:
        name = _parent(name)
        if name in ids:
            return name
    return None


def _descendant_counts(rows: list[LayerRow]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        n = r.name
        while n:
            n = _parent(n)
            counts[n] = counts.get(n, 0) + 1
    return counts


def _shown_descendants(name: str, shown: set[str]) -> int:
    prefix = name + "." if name else ""
    return sum(1 for n in shown if n != name and n.startswith(prefix))


def describe_module(table: LayerTable, name: str) -> dict[str, Any]:
    """A module's row plus its children and activation statistics, for the detail panel."""
    row = table.row(name)
    present = {r.name for r in table.rows}
    children = [r for r in table.rows if r.name and parent_row_name(r.name, present) == name]
    st = table.stats.get(name)
    return {
        "row": row,
        "children": children,
        "submodules": _descendant_counts(table.rows).get(name, 0),
        "activation": st,
        "parameter_share": row.parameters / table.total_parameters if table.total_parameters else None,
    }
