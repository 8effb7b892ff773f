"""Registry versions loaded through `explain.loading.loader.load_model` (every safety check
applies), kept per file sha256 so a worker or the API loads each version once."""
from __future__ import annotations

import threading
from collections import OrderedDict

from explain.loading.loader import load_model
from explain.model import LoadedModel
from explain.spec import InputSpec
from explain.workspace import Actor, Workspace
from explain.workspace.registry import VersionInfo


class ModelCache:
    """The last ``size`` model versions used, by sha256. One cache per thread that hooks models
    (the worker), so an attribution's hooks never meet another thread's forward pass."""

    def __init__(self, ws: Workspace, size: int = 4):
        self.ws = ws
        self.size = size
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, model: LoadedModel) -> None:
        """Keep ``model``, loaded elsewhere in this process through `load_model`, under its sha256."""
        with self._lock:
            self._models[model.sha256] = model

    def get(self, actor: Actor, name: str, version: int) -> LoadedModel:
        return self.load(actor, self.ws.registry.version(actor, name, version))  # the role check, every time

    def load(self, actor: Actor, info: VersionInfo) -> LoadedModel:
        """The model of ``info``, which the caller just read as ``actor`` (so ``actor`` may read it)."""
        name, version = info.name, info.version
        with self._lock:
            model = self._models.get(info.sha256)
            if model is not None:
                self._models.move_to_end(info.sha256)
                return model
        data, filename, spec = self.ws.registry.file(actor, name, version)
        model = load_model(data, spec=InputSpec.from_json(spec) if spec else None, filename=filename,
                           vetted=self.ws.vetting)  # vetted once per file, whichever process comes first
        model.name = name
        with self._lock:
            self._models[info.sha256] = model
            while len(self._models) > self.size:
                self._models.popitem(last=False)
        return model
