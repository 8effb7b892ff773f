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
  one torch import + 2 s. A call forks its model process from the zygote the user's previous
  call left (`explain.loading.sandbox_zygote.SharedZygote`); the benchmark keeps its zygotes in
  its own ``TMPDIR`` (none warm at the start, all gone at the end), and ``zygotes_started``
  counts the calls of a row that had to start one: round 1's first call, and any call after
  Glassbox's source changed (another engineer's edit makes a new zygote, as it must).

One JSON object per line on stdout (``--json FILE`` writes the list too):
``{"row", "seconds", "torch_imports", "compute", "overhead", "overhead_torch_imports", "target", "within",
"zygotes_started"}``, then ``{"load_average": [start], [end]}``.

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

    load_start = os.getloadavg()
    started: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="glassbox-latency-", dir="/tmp") as tmp:
        out = str(Path(tmp) / "attr.npz")
        base_env["TMPDIR"] = tmp  # this run's shared zygotes (a short path: unix socket names are short)
        zygotes = Path(tmp) / f"glassbox-zygotes-{os.geteuid()}"

        def sockets() -> set[Path]:
            return set(zygotes.glob("*.sock"))
        for round_ in range(args.rounds):
            record("import torch", timed([sys.executable, "-c", "import torch"], base_env)[0])
            env = {**base_env, "GLASSBOX_HOME": str(Path(tmp) / f"home{round_}")}  # a new workspace each round
            record("users list (new workspace)", timed(explain("users", "list"), env)[0])
            for argv in WORKSPACE_ROWS:
                record(" ".join(argv), timed(explain(*argv), env)[0])
            attribute = explain("attribute", args.model, "--inputs", args.inputs, "--method", args.method, "--out", out)
            for row in ("attribute (first)", "attribute (repeated)", "attribute (repeated)"):
                before = sockets()
                wall, stdout = timed(attribute, env)
                record(row, wall, float(json.loads(stdout)["seconds"]))
                started[row] = started.get(row, 0) + bool(sockets() - before)
        for sock in sockets():
            sock.unlink()  # its zygote ends within a second

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
            item.update(zygotes_started=started.get(row, 0))
        elif row != "import torch":
            item.update(target="< 0.5 torch import", within=wall < 0.5 * torch_s)
        rows.append(item)
        print(json.dumps(item), flush=True)
    load = {"load_average": [[round(x, 2) for x in load_start], [round(x, 2) for x in os.getloadavg()]]}
    print(json.dumps(load), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps([*rows, load], indent=1) + "\n")


if __name__ == "__main__":
    main()
