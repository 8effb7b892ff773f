"""The `Workspace`: one database and blob store behind the team's accounts, registry, runs, review, audit and
job queue (`open_workspace`); ``explain.workspace`` exports it lazily."""
from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from explain.config import blob_sweep_age_s, database_url, glassbox_home
from explain.workspace.audit import Audit
from explain.workspace.blobs import BlobStore
from explain.workspace.core import Core
from explain.workspace.db import Database, open_engine
from explain.workspace.files import private_home
from explain.workspace.jobs import Jobs
from explain.workspace.registry import Registry, VersionInfo
from explain.workspace.review import Review
from explain.workspace.roles import Action, Actor
from explain.workspace.runs import Runs
from explain.workspace.schema import BLOB_COLUMNS
from explain.workspace.users import Users
from explain.workspace.vetting import VettingResults

if TYPE_CHECKING:
    from explain.model import LoadedModel

#: Who registers the bundled samples in a new workspace.
SEEDER = Actor("glassbox", operator=True)


class Workspace:
    def __init__(self, url: str, home: Path):
        self.url = url
        self.home = private_home(Path(home))  # 0700, and its files 0600 (`files`), tightened if older
        self.engine = open_engine(url)
        self.core = Core(Database(self.engine), BlobStore(self.home / "blobs"))
        self.users = Users(self.core)
        self.registry = Registry(self.core)
        self.runs = Runs(self.core, self.registry)
        self.review = Review(self.core, self.registry)
        self.audit = Audit(self.core)
        self.jobs = Jobs(self.core)
        self.vetting = VettingResults(self.core)  # what vetting found, by file (`load_model(vetted=...)`)

    def seed(self, files: dict[str, tuple[bytes, str]]) -> list[VersionInfo]:
        """Register each ``name: (bytes, filename)`` whose model name is not in the registry yet."""
        known = {v.name for v in self.registry.list(SEEDER)}
        return [self.registry.register(SEEDER, name, data, filename)
                for name, (data, filename) in files.items() if name not in known]

    def require(self, actor: Actor, action: Action) -> str:
        """The actor's role as the database says it is now, or `PermissionDenied` unless it allows
        ``action``. A check, not a write: no audit row."""
        with self.core.db.transaction() as s:
            return self.core.require(s, actor, action)

    def load_model(self, actor: Actor, data: bytes, *, loader: Callable[..., LoadedModel] | None = None,
                   **options: Any) -> LoadedModel:
        """Load a model file to run it in this process for ``actor`` (a page's upload, or a version
        explored live): allowed from the editor role (`Action.LOAD_MODEL`), checked here on every call,
        before a byte of ``data`` is read.

        ``loader(data, **options)`` loads it (default `explain.loading.loader.load_model`; a page
        passes its cached one, so a result cached for one session never skips this check in another).

        Raises:
            PermissionDenied: a viewer or reviewer (or anyone not a member).
        """
        self.require(actor, Action.LOAD_MODEL)
        if loader is None:
            from explain.loading.loader import load_model as loader
        return loader(data, **options)

    def session_key(self) -> str:
        """The secret that signs sign-in cookies: ``GLASSBOX_SESSION_KEY``, else a random key kept in
        ``$GLASSBOX_HOME/session_key`` (created once, readable by the owner only)."""
        env = os.environ.get("GLASSBOX_SESSION_KEY", "").strip()
        if env:
            return env
        path = self.home / "session_key"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
        try:
            os.link(tmp, path)  # the first writer wins; a concurrent one reads the winner's key
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return path.read_text().strip()

    def sweep_blobs(self, min_age_s: float | None = None) -> list[str]:
        """Remove the blobs no row names, untouched for ``min_age_s`` (default `explain.config.blob_sweep_age_s`):
        what a process killed between a blob and its row left (`BlobStore.sweep`); the names removed. The
        server's and the worker's start do it (`explain.service.worker.recover_now`)."""
        def named() -> set[str]:
            with self.core.db.transaction() as s:
                return {sha for column in BLOB_COLUMNS for sha in s.scalars(select(column).distinct()) if sha}

        return self.core.blobs.sweep(named, blob_sweep_age_s() if min_age_s is None else min_age_s)

    def close(self) -> None:
        self.engine.dispose()


def open_workspace(url: str | None = None, home: Path | str | None = None) -> Workspace:
    """The workspace at ``url`` (default `explain.config.database_url`) with its blobs under
    ``home`` (default `explain.config.glassbox_home`), migrated to the newest schema."""
    home = Path(home) if home is not None else glassbox_home()
    return Workspace(url or database_url(), home)
