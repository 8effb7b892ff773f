"""A sample's first Overview view, read back with numpy alone (issue 21, "no waiting").

The Overview opens on input #0 of a sample explained with `DEFAULT_METHOD` at `OVERVIEW_STEPS` steps
with the final weights: its **first view**, an Overview run's record
(`explain.report.overview.first_view_record`: the prediction and layer tables, the map, and under
the summary's `FIRST_VIEW` what answering from it needs). It is kept in two places, in one form:

- beside the sample (`FIRST_VIEW_FILE`, written by ``python -m sample_models.train``), so the first
  server of a new workspace has it too;
- in the workspace, as a run under `first_view_id`, saved the first time a workspace opens the sample
  (for a sample file whose shipped view does not match it).

`find_first_view` reads either back as a `FirstView` with no torch imported: the app's first paint
(`ui.first_paint`) draws its prediction and map before the pages' glue is in, and the page answers
from it (`explain.report.overview.remember_first_view`) instead of computing, so both draw the same map.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from explain.attribution import Attribution, completeness_text
from explain.digest import digest_array, digest_bytes
from explain.errors import GlassboxError
from explain.spec import SPEC_KEY, InputSpec

if TYPE_CHECKING:
    from explain.workspace import Actor, Workspace
    from explain.workspace.runs import SavedRun

#: the method the Overview opens with
DEFAULT_METHOD = "integrated_gradients"
#: integration steps of the Overview's map: a responsive default for the linked views (the report
#: uses the methods' own defaults)
OVERVIEW_STEPS = 32
#: the key of a first-view run's summary that says what it holds (`first_view_record`)
FIRST_VIEW = "first_view"
#: the file beside a classifier sample holding its Overview's first view (a causal LM's Generate page
#: keeps its own: `explain.generation.explained.FIRST_VIEW_FILE`)
FIRST_VIEW_FILE = "overview_first_view.npz"


def first_view_id(model_sha256: str, x: np.ndarray, method: str = DEFAULT_METHOD) -> str:
    """The run id of the first view of ``x`` [1, ...] by the model file ``model_sha256`` (the same in every
    process and in the file shipped beside the sample)."""
    return "fv" + digest_bytes(f"{model_sha256}:{digest_array(x)}:{method}:{OVERVIEW_STEPS}".encode())[:10]


@dataclass(frozen=True)
class FirstView:
    """A first view as saved: the Overview run's summary and arrays, under its `first_view_id`."""

    run_id: str
    sha256: str  # the model file's
    summary: dict[str, Any]  # tables (Prediction, Layers), findings, and `FIRST_VIEW`
    inputs: dict[str, np.ndarray]  # "inputs" [1, ...] and the spec (`SPEC_KEY`)
    results: dict[str, np.ndarray]  # "<method>/<Attribution.to_npz_dict key>"

    @property
    def view(self) -> dict[str, Any]:
        """What `first_view_record` wrote under `FIRST_VIEW`: method, steps, index, format, the map's parameters,
        seconds, device, precision, notes, the layers offered, and the completeness tolerance and remedy."""
        return self.summary[FIRST_VIEW]

    @property
    def x(self) -> np.ndarray:
        return self.inputs["inputs"]

    @property
    def spec(self) -> InputSpec:
        return InputSpec.from_json(np.asarray(self.inputs[SPEC_KEY], dtype=np.uint8).tobytes())

    def attribution(self) -> Attribution:
        """The map, as `explain.report.overview.explain_input` returned it when it was saved."""
        view, method = self.view, self.view["method"]
        arrays = {k.split("/", 1)[1]: v for k, v in self.results.items() if k.startswith(f"{method}/")}
        return Attribution.from_npz_dict(arrays, method, view["params"], seconds=float(view["seconds"]),
                                         device=view["device"], precision=view["precision"], notes=list(view["notes"]))

    def probabilities(self) -> np.ndarray:
        """[K] the class probabilities of the input (the saved Prediction table's column)."""
        table = self.summary["tables"]["Prediction"]
        column = table["columns"].index("probability")
        return np.asarray([row[column] for row in table["data"]], dtype=np.float64)

    def completeness(self, index: int = 0) -> tuple[str, bool]:
        """The map's completeness judged as when it was saved (`explain.output.methods.base.completeness_caption`,
        its method's tolerance and remedy recorded): ``(text, exceeded)``."""
        err = float(self.attribution().completeness_error[index])
        return completeness_text(err, self.view["tolerance"], self.view["remedy"])

    @classmethod
    def from_run(cls, run: SavedRun) -> FirstView | None:
        """The first view a saved Overview run holds; None for a run that is not one (or saved before a first
        view carried its spec and tolerance)."""
        view = run.info.summary.get(FIRST_VIEW)
        if not view or "tolerance" not in view or SPEC_KEY not in run.inputs:
            return None
        return cls(run.info.id, run.info.sha256, run.info.summary, dict(run.inputs), dict(run.results))

    def write(self, path: str | Path) -> None:
        """One ``.npz``: the arrays and a JSON ``meta`` (id, sha256, summary), no pickle."""
        meta = json.dumps({"id": self.run_id, "sha256": self.sha256, "summary": self.summary})
        np.savez_compressed(path, meta=np.frombuffer(meta.encode("utf-8"), dtype=np.uint8),
                            **{f"inputs/{k}": v for k, v in self.inputs.items()},
                            **{f"results/{k}": v for k, v in self.results.items()})

    @classmethod
    def read(cls, path: str | Path) -> FirstView:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
        parts: dict[str, dict[str, np.ndarray]] = {"inputs": {}, "results": {}}
        for key, value in arrays.items():
            part, name = key.split("/", 1)
            parts[part][name] = value
        return cls(meta["id"], meta["sha256"], meta["summary"], parts["inputs"], parts["results"])


def read_shipped_first_view(run_id: str, shipped: Path | None) -> FirstView | None:
    """The first view under ``run_id`` in the file ``shipped`` beside the sample; None when it holds another
    view, is absent or cannot be read (no workspace needed: the app's first paint reads it before SQLAlchemy)."""
    if shipped is not None and shipped.is_file():
        try:
            found = FirstView.read(shipped)
            if found.run_id == run_id:
                return found
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # an unreadable file: the workspace's run, or the page computes it
    return None


def find_first_view(run_id: str, shipped: Path | None, ws: Workspace, actor: Actor) -> FirstView | None:
    """The first view under ``run_id``: the file ``shipped`` beside the sample when it holds that view
    (`read_shipped_first_view`), else the workspace's run of that id; None when neither has it (or what is there
    cannot be read)."""
    found = read_shipped_first_view(run_id, shipped)
    if found is not None:
        return found
    try:
        return FirstView.from_run(ws.runs.open(actor, run_id))
    except GlassboxError:  # none saved yet: the page computes it and saves it (`ui.workspace.keep_first_view`)
        return None
