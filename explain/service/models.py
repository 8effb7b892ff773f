"""The one model cache of a process: every loaded model, keyed by its file's sha256 + spec.

The pages (a sample, an upload, a saved run's version), the app's and the API's own queue
worker and a CLI's `run_here` all load through `shared_models()`, so one model file opened
from two pages, a saved run and the job they submit is loaded (and vetted) once per process:

    models = shared_models()
    model = models.open(data, filename="m.pt2", spec=None)      # a page: bytes in, LoadedModel out
    model = models.version(ws, actor, info)                      # a worker: a registry version
    models.loads                                                 # how many times a file was loaded

Keys: the file's sha256, the spec the caller gave (its JSON's digest; "" for the file's own) and,
for a spec inferred from sample inputs, their shape and dtype. A model loaded with the spec the
registry stores for its version (the spec a file does not carry, `client.SPEC_NOT_IN_FILE`) is
also found under that spec, so the worker's lookup of the version a page registered finds the
page's copy. The model object is shared by every caller (a page's thread and the worker's):
nothing may keep state on it beyond what `load_model` set.
"""
from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from explain.digest import digest_bytes
from explain.errors import IncompatibleInput
from explain.model import LoadedModel
from explain.spec import InputSpec
from explain.workspace import Actor, Workspace
from explain.workspace.registry import VersionInfo

#: how many models a process keeps (least recently used dropped first)
DEFAULT_SIZE = 6


def spec_key(spec: InputSpec | bytes | str | None) -> str:
    """A spec's part of a cache key: the digest of its JSON; "" when the file's own spec is used."""
    if spec is None:
        return ""
    data = spec.to_json().encode() if isinstance(spec, InputSpec) else spec
    return _json_key(data.encode() if isinstance(data, str) else data)


@functools.lru_cache(maxsize=32)
def _json_key(data: bytes) -> str:
    """`spec_key` of a spec's JSON, remembered: a page asks on every rerun, and a spec that carries a
    tokenizer is a megabyte of JSON to parse and write again (~0.1 s)."""
    try:
        return digest_bytes(InputSpec.from_json(data).to_json().encode())  # one spelling per spec
    except IncompatibleInput:  # not a spec: a causal .pt2's tokenizer.json (`loader.given_tokenizer`), or load_model says why
        return digest_bytes(data)


def sample_key(sample_input: np.ndarray | None) -> str:
    """The inputs' part of a key when they tell the spec: their row shape and dtype (other inputs of
    the same kind do not load the model again)."""
    return "" if sample_input is None else f"{tuple(sample_input.shape[1:])}:{sample_input.dtype}"


class ModelStore:
    """Loaded models by (sha256, spec key, sample key), least recently used first out."""

    def __init__(self, size: int = DEFAULT_SIZE):
        self.size = size
        self.loads = 0  # models loaded (not found): what the tests count
        self._models: OrderedDict[tuple[str, str, str], LoadedModel] = OrderedDict()
        self._lock = threading.RLock()
        self._loading: dict[tuple[str, str, str], threading.Lock] = {}

    def find(self, sha256: str, spec: str = "", sample: str = "") -> LoadedModel | None:
        with self._lock:
            key = (sha256, spec, sample)
            model = self._models.get(key)
            if model is None and not sample:  # loaded for another spec key whose spec is this one
                model = next((m for k, m in self._models.items() if k[0] == sha256 and k[1] != spec
                              and spec and spec_key(m.spec) == spec), None)
            if model is not None and key in self._models:
                self._models.move_to_end(key)
            return model

    def add(self, model: LoadedModel, spec: str = "", sample: str = "") -> None:
        """Keep ``model``, loaded through `load_model` elsewhere in this process."""
        with self._lock:
            self._models[(model.sha256, spec, sample)] = model
            self._models.move_to_end((model.sha256, spec, sample))
            while len(self._models) > self.size:
                self._models.popitem(last=False)

    def get_or_load(self, sha256: str, spec: str, sample: str, load: Callable[[], LoadedModel]) -> LoadedModel:
        """The model under this key, else ``load()`` it once (callers asking meanwhile wait for it)."""
        model = self.find(sha256, spec, sample)
        if model is not None:
            return model
        with self._lock:
            gate = self._loading.setdefault((sha256, spec, sample), threading.Lock())
        with gate:
            model = self.find(sha256, spec, sample)
            if model is None:
                model = load()
                with self._lock:
                    self.loads += 1
                self.add(model, spec, sample)
        with self._lock:
            self._loading.pop((sha256, spec, sample), None)
        return model

    def open(self, data: bytes, *, filename: str | None = None, spec: InputSpec | bytes | None = None,
             sample_input: np.ndarray | None = None, vetted=None, name: str | None = None,
             sha256: str | None = None) -> LoadedModel:
        """The model of the file ``data`` (its bytes) with ``spec`` (None: the file's own, else
        inferred from ``sample_input``), loaded through `load_model` the first time (``sha256``: the
        bytes' digest when the caller knows it)."""
        from explain.loading.loader import load_model

        skey = spec_key(spec)  # its JSON parsed only to load: a page asks on every rerun
        rows = None if spec is not None else sample_input

        def load() -> LoadedModel:
            given = spec.encode() if isinstance(spec, str) else spec  # JSON text, never a path: coerced by load_model
            model = load_model(data, spec=given, filename=filename, sample_input=rows, vetted=vetted)
            if name:
                model.name = name
            return model

        return self.get_or_load(sha256 or digest_bytes(data), skey, sample_key(rows), load)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
            self.loads = 0


_SHARED = ModelStore()


def shared_models() -> ModelStore:
    """This process's one model cache (the pages', the embedded worker's, the API's)."""
    return _SHARED


class ModelCache:
    """Registry versions for a worker or the API, through the process's one store (`shared_models`;
    ``store``: another, for threads that must not share model objects with hooked work, such as the
    API's request threads): a version a page already loaded is not loaded again. ``size`` raises the
    store's size."""

    def __init__(self, ws: Workspace, size: int | None = None, store: ModelStore | None = None):
        self.ws = ws
        self.store = store or shared_models()
        if size is not None:
            self.store.size = max(self.store.size, size)
        #: (name, version, sha256) -> its spec key: a version's file and spec never change, so a version
        #: loaded once is found again without reading its file (the API's every :predict asks)
        self._spec_keys: dict[tuple[str, int, str], str] = {}

    def add(self, model: LoadedModel) -> None:
        """Keep ``model``, loaded elsewhere in this process through `load_model` with its file's own spec."""
        self.store.add(model)

    def get(self, actor: Actor, name: str, version: int) -> LoadedModel:
        return self.load(actor, self.ws.registry.version(actor, name, version))  # the role check, every time

    def loaded(self, info: VersionInfo) -> LoadedModel | None:
        """The model of ``info`` if it is loaded already (reads nothing: the API's event loop asks), else None."""
        known = self._spec_keys.get((info.name, info.version, info.sha256))
        return self.store.find(info.sha256, known) if known is not None else None

    def load(self, actor: Actor, info: VersionInfo) -> LoadedModel:
        """The model of ``info``, which the caller just read as ``actor`` (so ``actor`` may read it)."""
        model = self.loaded(info)
        if model is not None:
            return model
        data, filename, spec = self.ws.registry.file(actor, info.name, info.version)
        if len(self._spec_keys) >= 4096:
            self._spec_keys.clear()
        self._spec_keys[(info.name, info.version, info.sha256)] = spec_key(spec)
        # vetted once per file, whichever process comes first
        return self.store.open(data, filename=filename, spec=spec, vetted=self.ws.vetting, name=info.name,
                               sha256=info.sha256)
