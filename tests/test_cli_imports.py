"""`--help` and the workspace-only subcommands start without torch, and a workspace, new or migrated, opens without Alembic.

Each check runs the real ``python -m explain`` entry point (`runpy`) in a fresh process and reports
which heavy modules that process imported; no timing is asserted (`benchmarks/latency.py` times it).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from explain.cli import SUBCOMMAND_MODULES, build_parser, subcommand_name
from explain.workspace import Actor, RunRecord, open_workspace

ROOT = Path(__file__).resolve().parent.parent

#: runs each argv given as JSON through `python -m explain`; prints the exit codes, then the modules
WRAPPER = """
import json, runpy, sys
codes = []
for argv in json.loads(sys.argv[1]):
    sys.argv = ["explain", *argv]
    try:
        runpy.run_module("explain", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        codes.append(exc.code)
print(json.dumps({"codes": codes, "torch": "torch" in sys.modules, "alembic": "alembic" in sys.modules}))
"""


def _imports(home: Path, *commands: list[str]) -> dict:
    env = {**os.environ, "GLASSBOX_HOME": str(home)}
    env.pop("GLASSBOX_DATABASE_URL", None)
    proc = subprocess.run([sys.executable, "-c", WRAPPER, json.dumps(commands)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_help_and_workspace_subcommands_import_no_torch(tmp_path):
    home = tmp_path / "home"
    first = _imports(home, ["--help"], ["users", "list"], ["models", "list"], ["runs", "list"], ["tokens", "list"])
    # a new workspace: created from the schema template, without Alembic (tests/test_workspace_template.py)
    assert first == {"codes": [0, 0, 0, 0, 0], "torch": False, "alembic": False}

    ws = open_workspace(f"sqlite:///{home / 'glassbox.db'}", home=home)
    try:
        run = ws.runs.save(Actor("cli:tester", operator=True), RunRecord(
            page="output", model="shapes", version=1, title="saliency", method="saliency",
            inputs={"x": np.zeros((1, 3), np.float32)}, results={"attr": np.ones((1, 3), np.float32)}))
    finally:
        ws.close()
    # an existing workspace at the newest schema: neither torch nor Alembic
    again = _imports(home, ["users", "list"], ["runs", "show", run.id], ["models", "list"], ["runs", "list"])
    assert again == {"codes": [0, 0, 0, 0], "torch": False, "alembic": False}


def test_help_lists_every_subcommand_with_its_docstring_line_without_importing_it():
    full = build_parser()._subparsers._group_actions[0]
    light = build_parser(["--help"])._subparsers._group_actions[0]
    assert list(light.choices) == list(full.choices) == [subcommand_name(m) for m in SUBCOMMAND_MODULES]
    assert [a.help for a in light._choices_actions] == [a.help for a in full._choices_actions]
    assert all(a.help for a in light._choices_actions)


def test_the_head_revision_read_without_alembic_is_alembics():
    from explain.workspace.db import head_revision, script_head

    assert script_head() == head_revision()


def test_a_graph_model_starts_the_zygote_before_anything_else(monkeypatch, tmp_path):
    """A TorchScript / .pt2 MODEL starts the model processes' zygote at once; other files do not."""
    from explain.cli import prestart_for
    from explain.loading import sandbox
    from explain.loading.sandbox_zygote import MODEL_PRELOAD

    started: list[str] = []
    monkeypatch.setattr(sandbox, "prestart_zygote", lambda preload: started.append(preload) or True)
    samples = ROOT / "sample_models" / "cancer"
    np.savez(tmp_path / "x.npz", inputs=np.zeros((1, 3)))
    assert prestart_for(["attribute", str(samples / "model.pt2"), "--inputs", "x.npz"])
    assert prestart_for(["inspect", str(samples / "model.torchscript.pt")])
    assert started == [MODEL_PRELOAD, MODEL_PRELOAD]
    for argv in (["attribute", str(samples / "model.safetensors")], ["attribute", str(tmp_path / "x.npz")],
                 ["attribute", "cancer"], ["users", "list"], ["--help"], ["runs", "show", str(samples / "model.pt2")]):
        assert not prestart_for(argv), argv
    assert len(started) == 2
