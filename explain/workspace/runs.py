"""Saved runs: immutable snapshots of what a page showed, reopened without recomputing.

A run names a model version and stores its inputs and results as two ``.npz`` blobs
(arrays only, never pickles) plus JSON: method, every parameter, target, the quality
figures and tables the page showed (``summary``), and the environment (package versions,
device, precision). A run whose maps are drawn again (Output, Dataset) also stores the spec
its inputs were read with, beside them (`spec_inputs`, `SavedRun.spec`), so it opens
without loading its model. The blobs are written before the row, in one transaction with its
audit entry, so a run is whole or absent, even if the process is killed mid-save.
"""
from __future__ import annotations

import functools
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from explain.errors import NotFound, UsageError
from explain.jsonable import to_json_safe
from explain.spec import SPEC_KEY, InputSpec
from explain.workspace.core import Core, iso, new_id
from explain.workspace.registry import Registry
from explain.workspace.roles import Action, Actor
from explain.workspace.schema import Model, ModelVersion, Run

PAGES = ("output", "structure", "training", "overview", "dataset", "report", "importance", "drift",
         "comparison", "generation")  # `run_kinds.RUN_KINDS`
_PACKAGES = ("torch", "captum", "shap", "numpy", "streamlit", "transformers")


@functools.cache
def _package_versions() -> tuple[tuple[str, str], ...]:
    """The installed versions of `_PACKAGES` (read once per process: reading package metadata costs
    milliseconds, a saved run per job would pay it every time)."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in _PACKAGES:
        try:
            found.append((name, version(name)))
        except PackageNotFoundError:
            continue
    return tuple(found)


def environment(device: str = "cpu", precision: str = "fp32") -> dict[str, Any]:
    """Package versions, Python, device and precision: what a reader needs to reproduce a run."""
    return {"python": platform.python_version(), "packages": dict(_package_versions()), "device": device,
            "precision": precision}


@dataclass(frozen=True)
class RunRecord:
    """What a page saves. ``inputs`` / ``results`` are named arrays; everything else JSON."""

    page: str
    model: str  # registry name
    version: int
    title: str
    method: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    target: Any = None  # an int, a list of ints or None (the predicted class)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    results: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=environment)


@dataclass(frozen=True)
class RunInfo:
    """A saved run's row (no arrays): what `runs list` prints."""

    id: str
    page: str
    title: str
    model: str
    version: int
    sha256: str
    method: str | None
    params: dict[str, Any]
    target: Any
    summary: dict[str, Any]
    environment: dict[str, Any]
    author: str
    created: str

    def to_dict(self) -> dict:
        return asdict(self)


def spec_inputs(spec: InputSpec) -> dict[str, np.ndarray]:
    """What a run's ``inputs`` add to carry ``spec`` (`SavedRun.spec` reads it back)."""
    return {SPEC_KEY: np.frombuffer(spec.to_json().encode("utf-8"), dtype=np.uint8)}


@dataclass(frozen=True)
class SavedRun:
    """A run with its arrays, exactly as saved."""

    info: RunInfo
    inputs: dict[str, np.ndarray]
    results: dict[str, np.ndarray]

    @property
    def spec(self) -> InputSpec | None:
        """The spec the run's inputs were read with (None: a run saved without one)."""
        data = self.inputs.get(SPEC_KEY)
        return None if data is None else InputSpec.from_json(np.asarray(data, dtype=np.uint8).tobytes())


class Runs:
    def __init__(self, core: Core, registry: Registry):
        self.core = core
        self.registry = registry

    def save(self, actor: Actor, record: RunRecord, run_id: str | None = None) -> RunInfo:
        """Save ``record`` whole; ``run_id`` (a queued job's id) makes saving twice return the first run."""
        if record.page not in PAGES:
            raise UsageError(f"Unknown page {record.page!r}.", f"Choose one of {', '.join(PAGES)}.")
        with self.core.db.transaction() as s:  # refuse before writing any blob
            self.core.require(s, actor, Action.SAVE_RUN)
            self.registry.version_id(s, record.model, record.version)
            existing = s.get(Run, run_id) if run_id else None
            if existing is not None:  # a job retried after its worker died between save and finish
                return self._info(s, existing)
        inputs_sha = self.core.blobs.put_arrays(record.inputs)
        results_sha = self.core.blobs.put_arrays(record.results)
        given, run_id = run_id is not None, run_id or new_id()
        try:
            return self._insert(actor, record, run_id, inputs_sha, results_sha)
        except IntegrityError:
            if not given:
                raise
        with self.core.db.transaction() as s:  # saved under this id by another process meanwhile: that one
            return self._info(s, s.get(Run, run_id))

    def _insert(self, actor: Actor, record: RunRecord, run_id: str, inputs_sha: str, results_sha: str) -> RunInfo:
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.SAVE_RUN)
            row = Run(id=run_id, version_id=self.registry.version_id(s, record.model, record.version),
                      page=record.page, title=record.title[:500], method=record.method,
                      params=to_json_safe(record.params), target={"value": to_json_safe(record.target)},
                      inputs_sha256=inputs_sha, results_sha256=results_sha, summary=to_json_safe(record.summary),
                      environment=to_json_safe(record.environment), author=actor.name)
            s.add(row)
            s.flush()
            self.core.audit(s, actor, "run.save", "run", run_id,
                            after={"model": f"{record.model}@v{record.version}", "page": record.page,
                                   "method": record.method})
            return self._info(s, row)

    def _info(self, s, row: Run) -> RunInfo:
        version = s.get(ModelVersion, row.version_id)
        model = s.get(Model, version.model_id)
        return RunInfo(row.id, row.page, row.title, model.name, version.number, version.sha256, row.method,
                       row.params, row.target.get("value"), row.summary, row.environment, row.author,
                       iso(row.created_at))

    def info(self, actor: Actor, run_id: str) -> RunInfo:
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.READ)
            row = s.get(Run, str(run_id)[:32])
            if row is None:
                raise NotFound(f"No saved run {str(run_id)[:40]!r}.", "It may have been mistyped; `runs list` lists them.")
            return self._info(s, row)

    def open(self, actor: Actor, run_id: str) -> SavedRun:
        """The run with its arrays, from the blobs, as saved."""
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.READ)
            row = s.get(Run, str(run_id)[:32])
            if row is None:
                raise NotFound(f"No saved run {str(run_id)[:40]!r}.")
            info, shas = self._info(s, row), (row.inputs_sha256, row.results_sha256)
        return SavedRun(info, self.core.blobs.get_arrays(shas[0]), self.core.blobs.get_arrays(shas[1]))

    def list(self, actor: Actor, model: str | None = None, version: int | None = None,
             limit: int = 200) -> list[RunInfo]:
        """Saved runs, newest first (of one model / version if given)."""
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.READ)
            query = select(Run).join(ModelVersion, Run.version_id == ModelVersion.id)
            if model is not None:
                query = query.where(ModelVersion.id.in_(
                    select(ModelVersion.id).join(Model, Model.id == ModelVersion.model_id).where(Model.name == model)))
            if version is not None:
                query = query.where(ModelVersion.number == version)
            rows = s.scalars(query.order_by(Run.created_at.desc(), Run.id).limit(limit))
            return [self._info(s, r) for r in rows]

    def blob_names(self, actor: Actor, run_id: str) -> tuple[str, str]:
        """The sha256 of a run's inputs and results blobs (for integrity checks)."""
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.READ)
            row = s.get(Run, run_id)
            if row is None:
                raise NotFound(f"No saved run {run_id!r}.")
            return row.inputs_sha256, row.results_sha256
