"""The model registry: models, numbered versions (one per distinct file sha256), tags, aliases
and the training logs / checkpoints attached to a version.

A version is named ``NAME`` (newest), ``NAME@vN`` or ``NAME@ALIAS`` (`parse_ref`).

An admin may **protect** an alias (`protect`, e.g. ``production``) and name its approvers; then
`set_alias`, ``register(alias=...)`` and `move_alias_in` refuse to move it unless the mover is an
admin or one of those approvers *and* moves it through an approving decision
(`explain.workspace.review.Review.decide`) that carries a justification and the comparison run it
was made on. The check reads the decision's row, in the transaction that moves the alias.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from explain.errors import NotFound, PermissionDenied, UsageError
from explain.workspace.core import Core, iso
from explain.workspace.roles import Action, Actor, allows
from explain.workspace.schema import (
    Alias,
    Attachment,
    Decision,
    Model,
    ModelVersion,
    ProtectedAlias,
    User,
    VersionTag,
)

ATTACHMENT_KINDS = ("training_log", "checkpoint")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: int
    sha256: str
    filename: str
    size: int
    created: str
    created_by: str
    aliases: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    decision: str | None = None  # the latest verdict, if any
    protected: dict[str, list[str]] = field(default_factory=dict)  # its protected aliases -> approvers

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"


@dataclass(frozen=True)
class AttachmentInfo:
    id: int
    kind: str
    filename: str
    sha256: str
    created: str
    created_by: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ProtectionInfo:
    """A protected alias of a model: who may move it (admins and ``approvers``), through a decision."""

    model: str
    alias: str
    approvers: list[str]
    created_by: str
    created: str

    def to_dict(self) -> dict:
        return asdict(self)


def check_name(name: str, what: str = "model name") -> str:
    name = (name or "").strip()
    if not _NAME.match(name):
        raise UsageError(f"{name!r} is not a valid {what}.",
                         "Use letters, digits, '.', '_' or '-' (up to 200), starting with a letter or digit.")
    return name


def check_alias(alias: str) -> str:
    """``alias`` stripped if it is a valid alias name (a name that does not read as ``vN``)."""
    alias = check_name(alias, "alias")
    if re.fullmatch(r"v\d+", alias):
        raise UsageError(f"{alias!r} reads as a version number.", "Choose an alias that is not v<N>.")
    return alias


def parse_ref(ref: str) -> tuple[str, int | str | None]:
    """``NAME`` -> (NAME, None: newest); ``NAME@v3`` -> (NAME, 3); ``NAME@prod`` -> (NAME, "prod")."""
    name, _, which = ref.partition("@")
    if not which:
        return name, None
    if re.fullmatch(r"v\d+", which):
        return name, int(which[1:])
    return name, which


class Registry:
    def __init__(self, core: Core):
        self.core = core

    # -- reading -------------------------------------------------------------------
    def _info(self, s, model: Model, v: ModelVersion) -> VersionInfo:
        aliases = sorted(s.scalars(select(Alias.name).where(Alias.version_id == v.id)))
        tags = sorted(s.scalars(select(VersionTag.tag).where(VersionTag.version_id == v.id)))
        verdict = s.scalar(select(Decision.verdict).where(Decision.version_id == v.id)
                           .order_by(Decision.id.desc()).limit(1))
        protected = {p.name: list(p.approvers) for p in s.scalars(
            select(ProtectedAlias).where(ProtectedAlias.model_id == model.id, ProtectedAlias.name.in_(aliases)))}
        return VersionInfo(model.name, v.number, v.sha256, v.filename, v.size, iso(v.created_at), v.created_by,
                           aliases, tags, verdict, protected)

    def _model(self, s, name: str) -> Model:
        model = s.scalar(select(Model).where(Model.name == name))
        if model is None:
            raise NotFound(f"No model {name!r} in the workspace.", "`python -m explain models list` lists them.")
        return model

    def _version(self, s, name: str, which: int | str | None) -> tuple[Model, ModelVersion]:
        model = self._model(s, name)
        query = select(ModelVersion).where(ModelVersion.model_id == model.id)
        if which is None:
            version = s.scalar(query.order_by(ModelVersion.number.desc()).limit(1))
        elif isinstance(which, int):
            version = s.scalar(query.where(ModelVersion.number == which))
        else:
            version = s.scalar(select(ModelVersion).join(Alias, Alias.version_id == ModelVersion.id)
                               .where(Alias.model_id == model.id, Alias.name == which))
        if version is None:
            raise NotFound(f"Model {name!r} has no version {which!r}.")
        return model, version

    def version(self, actor: Actor, name: str, which: int | str | None = None) -> VersionInfo:
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.READ)
            return self._info(s, *self._version(s, name, which))

    def resolve(self, actor: Actor, ref: str) -> VersionInfo:
        """A version by reference: ``NAME``, ``NAME@vN`` or ``NAME@ALIAS``."""
        return self.version(actor, *parse_ref(ref))

    def find_by_sha(self, actor: Actor, sha256: str) -> VersionInfo | None:
        """The oldest version whose file has this sha256, in any model."""
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.READ)
            row = s.execute(select(Model, ModelVersion).join(ModelVersion, ModelVersion.model_id == Model.id)
                            .where(ModelVersion.sha256 == sha256).order_by(ModelVersion.id).limit(1)).first()
            return self._info(s, *row) if row else None

    def list(self, actor: Actor, name: str | None = None) -> list[VersionInfo]:
        """Every version (of ``name``, or of every model), by model name then number."""
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.READ)
            query = select(Model, ModelVersion).join(ModelVersion, ModelVersion.model_id == Model.id)
            if name is not None:
                query = query.where(Model.name == self._model(s, name).name)
            rows = s.execute(query.order_by(Model.name, ModelVersion.number)).all()
            return [self._info(s, m, v) for m, v in rows]

    def file(self, actor: Actor, name: str, which: int | str | None = None) -> tuple[bytes, str, bytes | None]:
        """A version's file bytes, its file name and its spec JSON (None if it was registered without)."""
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.READ)
            _, v = self._version(s, name, which)
            sha, filename, spec_sha = v.sha256, v.filename, v.spec_sha256
        return self.core.blobs.get(sha), filename, self.core.blobs.get(spec_sha) if spec_sha else None

    # -- writing -----------------------------------------------------------------------
    def register(self, actor: Actor, name: str, data: bytes, filename: str, spec_json: bytes | None = None,
                 alias: str | None = None) -> VersionInfo:
        """Register ``data`` as a version of model ``name``; the existing version if it is one already."""
        name = check_name(name)
        if alias is not None:
            alias = check_alias(alias)
        with self.core.db.transaction() as s:  # refuse before anything is written
            self.core.require(s, actor, Action.UPLOAD)
            model = s.scalar(select(Model).where(Model.name == name))
            if alias is not None and model is not None:
                self._guard(s, actor, model, alias, None)  # a protected alias moves only by a decision
        sha = self.core.blobs.put(data)  # the blob first: no row ever names a missing blob
        spec_sha = self.core.blobs.put(spec_json) if spec_json else None
        for attempt in range(5):  # two sessions numbering the same model at once: the loser retries
            try:
                info = self._register_row(actor, name, sha, len(data), filename, spec_sha)
                break
            except IntegrityError:
                if attempt == 4:
                    raise
        if alias is not None:
            info = self.set_alias(actor, name, alias, info.version)
        return info

    def _register_row(self, actor, name, sha, size, filename, spec_sha) -> VersionInfo:
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.UPLOAD)
            # Lock the model row (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers) so
            # concurrent registrations number one at a time instead of colliding on the same number.
            model = s.scalar(select(Model).where(Model.name == name).with_for_update())
            if model is None:
                model = Model(name=name, created_by=actor.name)
                s.add(model)
                s.flush()
                self.core.audit(s, actor, "model.add", "model", name)
            existing = s.scalar(select(ModelVersion).where(ModelVersion.model_id == model.id,
                                                           ModelVersion.sha256 == sha))
            if existing is not None:
                return self._info(s, model, existing)
            number = (s.scalar(select(func.max(ModelVersion.number)).where(ModelVersion.model_id == model.id))
                      or 0) + 1
            version = ModelVersion(model_id=model.id, number=number, sha256=sha, filename=filename[:500],
                                   size=size, spec_sha256=spec_sha, created_by=actor.name)
            s.add(version)
            s.flush()
            self.core.audit(s, actor, "version.add", "model_version", f"{name}@v{number}",
                            after={"sha256": sha, "filename": filename})
            return self._info(s, model, version)

    def set_alias(self, actor: Actor, name: str, alias: str, version: int) -> VersionInfo:
        """Point ``alias`` of model ``name`` at ``version`` (moving it from wherever it was)."""
        alias = check_alias(alias)
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.EDIT_REGISTRY)
            return self._move_alias(s, actor, name, alias, version)

    @staticmethod
    def _lock(s, model: Model) -> None:
        """Hold the model's row until commit (PostgreSQL; on SQLite BEGIN IMMEDIATE already serialises
        writers), so concurrent alias moves and tags on one model queue instead of colliding."""
        s.execute(select(Model.id).where(Model.id == model.id).with_for_update())

    def _move_alias(self, s, actor, name, alias, version, decision_id: int | None = None) -> VersionInfo:
        model, v = self._version(s, name, version)
        self._lock(s, model)
        self._guard(s, actor, model, alias, s.get(Decision, decision_id) if decision_id is not None else None, v)
        row = s.scalar(select(Alias).where(Alias.model_id == model.id, Alias.name == alias))
        before = None
        if row is None:
            s.add(Alias(model_id=model.id, name=alias, version_id=v.id))
        else:
            before = {"version": s.scalar(select(ModelVersion.number).where(ModelVersion.id == row.version_id))}
            row.version_id = v.id
        s.flush()
        self.core.audit(s, actor, "alias.set", "alias", f"{name}@{alias}", before=before, after={"version": version})
        return self._info(s, model, v)

    def add_tag(self, actor: Actor, name: str, version: int, tag: str) -> VersionInfo:
        check_name(tag, "tag")
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.EDIT_REGISTRY)
            model, v = self._version(s, name, version)
            self._lock(s, model)
            if s.get(VersionTag, (v.id, tag)) is None:
                s.add(VersionTag(version_id=v.id, tag=tag))
                s.flush()
                self.core.audit(s, actor, "tag.add", "model_version", f"{name}@v{version}", after={"tag": tag})
            return self._info(s, model, v)

    def attach(self, actor: Actor, name: str, version: int, kind: str, data: bytes, filename: str) -> AttachmentInfo:
        """Attach a training log or checkpoint to a version (stored once by content)."""
        if kind not in ATTACHMENT_KINDS:
            raise UsageError(f"Unknown attachment kind {kind!r}.", f"Choose one of {', '.join(ATTACHMENT_KINDS)}.")
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.EDIT_REGISTRY)
        sha = self.core.blobs.put(data)
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.EDIT_REGISTRY)
            _, v = self._version(s, name, version)
            row = Attachment(version_id=v.id, kind=kind, filename=filename[:500], sha256=sha, created_by=actor.name)
            s.add(row)
            s.flush()
            self.core.audit(s, actor, "attachment.add", "model_version", f"{name}@v{version}",
                            after={"kind": kind, "filename": filename, "sha256": sha})
            return AttachmentInfo(row.id, kind, row.filename, sha, iso(row.created_at), actor.name)

    def attachments(self, actor: Actor, name: str, version: int) -> list[AttachmentInfo]:
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.READ)
            _, v = self._version(s, name, version)
            rows = s.scalars(select(Attachment).where(Attachment.version_id == v.id).order_by(Attachment.id))
            return [AttachmentInfo(a.id, a.kind, a.filename, a.sha256, iso(a.created_at), a.created_by)
                    for a in rows]

    def version_id(self, s, name: str, which: int | str | None) -> int:
        """The row id of a version (for the other workspace parts, inside their transaction)."""
        return self._version(s, name, which)[1].id

    def move_alias_in(self, s, actor: Actor, name: str, alias: str, version: int,
                      decision_id: int | None = None) -> None:
        """`set_alias` inside a caller's transaction (a decision that approves and moves an alias).
        ``decision_id``: that decision's row, flushed in ``s``; a protected alias moves only with it."""
        self._move_alias(s, actor, name, check_alias(alias), version, decision_id)

    # -- protected aliases ---------------------------------------------------------------
    def _guard(self, s, actor: Actor, model: Model, alias: str, decision: Decision | None,
               version: ModelVersion | None = None) -> None:
        """Refuse to move ``alias`` of ``model`` if it is protected, unless ``actor`` is an admin or one
        of its approvers and ``decision`` is their approval of ``version`` that moves this alias,
        with a justification and a comparison run."""
        row = s.scalar(select(ProtectedAlias).where(ProtectedAlias.model_id == model.id,
                                                    ProtectedAlias.name == alias))
        if row is None:
            return
        ref, approvers = f"{model.name}@{alias}", list(row.approvers)
        named = not actor.token and not actor.operator and actor.name in approvers  # a token never borrows a name
        if not (named or self.core.role_of(s, actor) == "admin"):
            raise PermissionDenied(f"{ref} is protected: only admins and its approvers "
                                   f"({', '.join(approvers) or 'none named'}) may move it.",
                                   "Ask one of them to approve the version with a decision.")
        if decision is None:
            raise PermissionDenied(f"{ref} is protected: it moves only through an approving decision with a "
                                   "justification and the comparison it was made on.",
                                   f"python -m explain models decide {model.name}@vN --verdict approve --note WHY "
                                   f"--comparison RUN --move-alias {alias}")
        if not (decision.note or "").strip():
            raise UsageError(f"Moving protected {ref} needs a justification: the decision's note is empty.")
        if not decision.comparison_run:
            raise UsageError(f"Moving protected {ref} needs the comparison run the decision was made on.",
                             "Name it with --comparison RUN (a saved comparison of the two versions).")
        if (decision.author, decision.verdict, decision.alias) != (actor.name, "approve", alias) or \
                version is None or decision.version_id != version.id:
            raise PermissionDenied(f"{ref} is protected: decision {decision.id} is not {actor.name}'s approval "
                                   "that moves it to this version.")

    def protect(self, actor: Actor, name: str, alias: str, approvers: Sequence[str] = ()) -> ProtectionInfo:
        """Protect ``alias`` of model ``name`` (admins only); ``approvers`` (user names, reviewer or
        above) may then move it too, through a decision. Protecting again replaces the approvers."""
        alias = check_alias(alias)
        names = sorted({str(a).strip() for a in approvers if str(a).strip()})
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.PROTECT_ALIAS)
            model = self._model(s, name)
            self._lock(s, model)
            for user in names:
                role = s.scalar(select(User.role).where(User.name == user))
                if role is None:
                    raise NotFound(f"No user {user!r} to name as an approver.",
                                   "`python -m explain users list` lists the accounts.")
                if not allows(role, Action.DECIDE):
                    raise UsageError(f"{user} ({role}) may not decide, so cannot approve {name}@{alias}.",
                                     "Approvers need the reviewer role or above.")
            row = s.scalar(select(ProtectedAlias).where(ProtectedAlias.model_id == model.id,
                                                        ProtectedAlias.name == alias))
            before = None
            if row is None:
                row = ProtectedAlias(model_id=model.id, name=alias, approvers=names, created_by=actor.name)
                s.add(row)
            else:
                before = {"approvers": list(row.approvers)}
                row.approvers = names
            s.flush()
            self.core.audit(s, actor, "alias.protect", "alias", f"{name}@{alias}", before=before,
                            after={"approvers": names})
            return ProtectionInfo(name, alias, names, row.created_by, iso(row.created_at))

    def unprotect(self, actor: Actor, name: str, alias: str) -> None:
        """Lift the protection of ``alias`` (admins only): it moves as any alias again."""
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.PROTECT_ALIAS)
            model = self._model(s, name)
            self._lock(s, model)
            row = s.scalar(select(ProtectedAlias).where(ProtectedAlias.model_id == model.id,
                                                        ProtectedAlias.name == alias))
            if row is None:
                raise NotFound(f"{name}@{alias} is not protected.")
            approvers = list(row.approvers)
            s.delete(row)
            self.core.audit(s, actor, "alias.unprotect", "alias", f"{name}@{alias}",
                            before={"approvers": approvers})

    def protections(self, actor: Actor, name: str | None = None) -> list[ProtectionInfo]:
        """The protected aliases (of ``name``, or of every model), by model then alias."""
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.READ)
            query = select(Model, ProtectedAlias).join(ProtectedAlias, ProtectedAlias.model_id == Model.id)
            if name is not None:
                query = query.where(Model.id == self._model(s, name).id)
            return [ProtectionInfo(m.name, p.name, list(p.approvers), p.created_by, iso(p.created_at))
                    for m, p in s.execute(query.order_by(Model.name, ProtectedAlias.name))]
