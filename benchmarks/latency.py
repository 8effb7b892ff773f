"""CLI latency against a torch import timed in the same run (issue 21, "No waiting").

Every row is a whole new process (``python -m explain ...``), as a user or a CI script starts
it, timed from outside; each round runs them in turn (a torch import first), so a machine
whose speed drifts moves every row alike, and each row's median over the rounds is reported
with its ratio to the median torch import (``import torch`` alone in a fresh interpreter):

- ``--help`` and the workspace-only subcommands (``users list`` on a new workspace and on an
  existing one, ``runs list``, ``models list``, ``tokens list``): target under half a torch import;
- ``attribute`` on a small ``.pt2`` (default the cancer sample's): the first call on a new
  workspace, then repeated calls. ``compute`` is the seconds the command itself reports for
  the attribution, ``overhead`` = wall - compute; target for a repeated call: overhead within
  one torch import + 2 s.

One JSON object per line on stdout (``--json FILE`` writes the list too):
``{"row", "seconds", "torch_imports", "compute", "overhead", "overhead_torch_imports", "target", "within"}``.

    python benchmarks/latency.py [--rounds 3] [--model FILE.pt2 --inputs X.npz] [--json rows.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKSPACE_ROWS = (("--help",), ("users", "list"), ("runs", "list"), ("models", "list"), ("tokens", "list"))


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of one new process and its stdout; a failure stops the benchmark."""
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return seconds, proc.stdout


def explain(*args: str) -> list[str]:
    return [sys.executable, "-m", "explain", *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every row (medians reported)")
    parser.add_argument("--model", default=str(ROOT / "sample_models" / "cancer" / "model.pt2"))
    parser.add_argument("--inputs", default=str(ROOT / "sample_models" / "cancer" / "samples.npz"))
    parser.add_argument("--method", default="saliency")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()

    base_env = {k: v for k, v in os.environ.items() if k != "GLASSBOX_DATABASE_URL"}
    base_env.pop("GLASSBOX_EXTERNAL_WORKER", None)  # attribute runs its job in its own process
    seconds: dict[str, list[float]] = {}
    compute: dict[str, list[float]] = {}

    def record(row: str, wall: float, reported: float | None = None) -> None:
        seconds.setdefault(row, []).append(wall)
        if reported is not None:
            compute.setdefault(row, []).append(reported)

    with tempfile.TemporaryDirectory(prefix="glassbox-latency-") as tmp:
        out = str(Path(tmp) / "attr.npz")
        for round_ in range(args.rounds):
            record("import torch", timed([sys.executable, "-c", "import torch"], base_env)[0])
            env = {**base_env, "GLASSBOX_HOME": str(Path(tmp) / f"home{round_}")}  # a new workspace each round
            record("users list (new workspace)", timed(explain("users", "list"), env)[0])
            for argv in WORKSPACE_ROWS:
                record(" ".join(argv), timed(explain(*argv), env)[0])
            attribute = explain("attribute", args.model, "--inputs", args.inputs, "--method", args.method, "--out", out)
            for row in ("attribute (first)", "attribute (repeated)", "attribute (repeated)"):
                wall, stdout = timed(attribute, env)
                record(row, wall, float(json.loads(stdout)["seconds"]))

    torch_s = statistics.median(seconds["import torch"])
    rows = []
    for row, walls in seconds.items():
        wall = statistics.median(walls)
        item = {"row": row, "seconds": round(wall, 3), "torch_imports": round(wall / torch_s, 3), "runs": len(walls)}
        if row in compute:
            work = statistics.median(compute[row])
            overhead = statistics.median(w - c for w, c in zip(walls, compute[row], strict=True))
            item.update(compute=round(work, 3), overhead=round(overhead, 3),
                        overhead_torch_imports=round(overhead / torch_s, 3))
            if row == "attribute (repeated)":
                item.update(target="overhead <= 1 torch import + 2 s", within=overhead <= torch_s + 2.0)
        elif row != "import torch":
            item.update(target="< 0.5 torch import", within=wall < 0.5 * torch_s)
        rows.append(item)
        print(json.dumps(item), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
