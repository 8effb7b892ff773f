"""`RayEngine`: a dataset's shards run in Ray actors that keep the model loaded.

The model travels as its file's bytes and its spec (JSON), never as a pickled
model object: each actor loads it with `explain.loading.loader.load_model`, so
every safety check (format sniffing, the TorchScript / ``.pt2`` allowlist, the
sandbox vetting) runs again in the actor, and the actor refuses a file whose
digest is not the model's. An actor asks for one GPU when the cluster has GPUs
(one actor per GPU), else one CPU (one actor per CPU). The actors stay up after a run
(`release_actors` frees them), so the next run on the same model starts at once.
Shards are the same `explain.dataset.shard.explain_shard` calls as the local
engine's, so the numbers are the same: bit for bit when torch runs on as many threads
as in the actor (one per 1-CPU actor); a CPU kernel's summation order depends on its
thread count, so otherwise they agree to float32 rounding (about 1e-7 relative).

Ray is imported here only: ``import explain`` and the local engine never pay for it.
The cluster: ``ray.init`` already called by the caller (a test's
``ray.init(num_cpus=2)``, a worker), else ``GLASSBOX_RAY_ADDRESS``
(`explain.config.ray_address`), else a local Ray started for this process.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from explain import config, errors
from explain.dataset.reading import Dataset
from explain.dataset.shard import ShardJob, ShardResult, explain_shard
from explain.digest import digest_bytes
from explain.errors import InputRefused, UsageError
from explain.model import LoadedModel
from explain.progress import ProgressFn, report_progress


@dataclass(frozen=True)
class ModelFile:
    """A model as the actors receive it: the file's bytes, its name, the resolved spec (JSON)."""

    data: bytes
    name: str
    spec_json: str

    @classmethod
    def of(cls, model: LoadedModel, data: bytes, name: str | None = None) -> ModelFile:
        """The file ``model`` was loaded from (refused when its bytes are not that model's)."""
        if digest_bytes(data) != model.sha256:
            raise UsageError(f"The file given for {model.name} is not the file it was loaded from.")
        return cls(bytes(data), name or model.name, model.spec.to_json())


class ShardWorker:
    """The actor: loads the model once with explain's loader, then explains shards."""

    def __init__(self, data: bytes, name: str, spec_json: str, sha256: str, trusted: bool):
        import torch

        from explain.loading.loader import load_model
        from explain.spec import InputSpec

        self.error: tuple[str, str, str | None] | None = None
        self.model = None
        try:
            device = "cuda" if torch.cuda.is_available() else "cpu"
            model = load_model(data, spec=InputSpec.from_json(spec_json), filename=name, trusted=trusted, device=device)
            if model.sha256 != sha256:
                raise errors.UnsafeFile("The model file changed on its way to the Ray actor.")
            self.model = model
        except errors.GlassboxError as exc:
            self.error = (type(exc).__name__, exc.reason, exc.hint)

    def run(self, index: int, start: int, stop: int, inputs: np.ndarray, labels: np.ndarray | None,
            job: ShardJob) -> ShardResult | tuple[str, str, str | None]:
        """The shard's result, or the (error class, reason, hint) of a refusal."""
        if self.error is not None:
            return self.error
        try:
            inputs = np.array(inputs)  # Ray hands arrays over read-only; torch wants to own a writable copy
            attribution, probabilities = explain_shard(self.model, inputs, job, labels, start=start)
        except errors.GlassboxError as exc:
            return (type(exc).__name__, exc.reason, exc.hint)
        return ShardResult(index, start, stop, attribution, probabilities)


class RayEngine:
    """Shards on Ray actors (see the module docstring).

    Args:
        model: the loaded model (its digest checks the file the actors get).
        model_file: a `ModelFile`, or the file's bytes (or a path) the model was loaded from.
        address: a Ray cluster address; default ``GLASSBOX_RAY_ADDRESS``.
        actors: how many actors (default: one per GPU, else one per CPU).
    """

    name = "ray"

    def __init__(self, model: LoadedModel, model_file: ModelFile | bytes | str | Path,
                 address: str | None = None, actors: int | None = None):
        if not isinstance(model_file, ModelFile):
            data = Path(model_file).read_bytes() if isinstance(model_file, (str, Path)) else bytes(model_file)
            model_file = ModelFile.of(model, data)
        self.model = model
        self.model_file = model_file
        self.address = address
        self.actors = actors

    def _connect(self):
        try:
            import ray
        except ImportError:  # pragma: no cover - ray is in requirements.txt
            raise UsageError("The ray engine needs Ray (pip install 'ray>=2.40').") from None
        if not ray.is_initialized():
            address = self.address or config.ray_address()
            options: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
            if address:  # a remote cluster gets explain with the job; its nodes need torch & co installed
                import explain

                options["runtime_env"] = {"py_modules": [str(Path(explain.__file__).parent)]}
            try:
                ray.init(address=address or None, **options)
            except ConnectionError as exc:
                raise UsageError(f"Cannot reach the Ray cluster at {address} ({exc}).",
                                 "Check GLASSBOX_RAY_ADDRESS (ray start --head prints it).") from None
        return ray

    def _workers(self, ray, shards: int) -> list:
        """The actors for this model: the pool kept from the last run when it is this model's, else new ones."""
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        count = max(1, self.actors or (gpus or cpus))
        key = (ray.get_runtime_context().get_job_id(), self.model.sha256, self.model_file.spec_json,
               config.trusted_mode(), count, bool(gpus))  # a new ray.init is a new job: old handles are gone
        if _POOL.get("key") == key:
            return _POOL["workers"]
        release_actors()
        actor_class = ray.remote(**({"num_gpus": 1} if gpus else {"num_cpus": 1}))(ShardWorker)
        file_ref = ray.put(self.model_file.data)
        workers = [actor_class.remote(file_ref, self.model_file.name, self.model_file.spec_json,
                                      self.model.sha256, config.trusted_mode()) for _ in range(count)]
        _POOL.update(key=key, workers=workers)
        return workers

    def run(self, dataset: Dataset, shards: list[tuple[int, int]], job: ShardJob,
            progress: ProgressFn | None) -> Iterator[ShardResult]:
        ray = self._connect()
        workers = self._workers(ray, len(shards))
        pending: dict[Any, int] = {}  # object ref -> worker index
        queue = list(enumerate(shards))
        finished = False
        try:
            def submit(worker: int) -> None:
                index, (start, stop) = queue.pop(0)
                labels = dataset.labels[start:stop] if dataset.labels is not None else None
                ref = workers[worker].run.remote(index, start, stop, dataset.rows(start, stop), labels, job)
                pending[ref] = worker

            for w in range(len(workers)):
                if queue:
                    submit(w)
            done = 0
            while pending:
                report_progress(progress, done, len(shards))  # a cancel point while the actors work
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                if not ready:
                    continue
                worker = pending.pop(ready[0])
                result = _result(ray, ready[0])
                if queue:
                    submit(worker)  # keep the actor busy while the caller looks at this shard
                done += 1
                report_progress(progress, done, len(shards))
                yield result
            finished = True
        finally:
            if not finished:  # cancelled, failed or abandoned: killing the actors stops the shards in flight
                release_actors()


#: the actors of the last run ({"key": ..., "workers": [...]}), kept so the next run on the same
#: model starts at once; one pool per process, replaced when another model (or cluster shape) comes.
_POOL: dict[str, Any] = {}


def release_actors() -> None:
    """Kill the kept actors (their CPUs / GPUs go back to the cluster)."""
    workers = _POOL.pop("workers", [])
    _POOL.clear()
    if workers:
        import ray

        if ray.is_initialized():
            for worker in workers:
                with contextlib.suppress(Exception):  # an actor of an earlier ray.init, or one that died
                    ray.kill(worker)


def _result(ray, ref) -> ShardResult:
    """The actor's answer; a refusal or a crash becomes one `GlassboxError` line here."""
    try:
        value = ray.get(ref)
    except ray.exceptions.RayError as exc:
        cause = getattr(exc, "cause", None) or exc
        lines = [line for line in str(cause).splitlines() if line.strip()]
        raise InputRefused(f"A Ray actor failed: {type(cause).__name__}: {lines[-1] if lines else ''}") from None
    if isinstance(value, tuple):
        kind, reason, hint = value
        error_class = getattr(errors, kind, InputRefused)
        raise error_class(reason, hint)
    return value
