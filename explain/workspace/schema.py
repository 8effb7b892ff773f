"""The workspace's tables (SQLAlchemy 2 declarative). Changed only through a migration.

A change here needs a new file in ``migrations/versions/``; `tests/test_workspace.py`
checks that the migrated database and these models agree (Alembic's ``compare_metadata``).
Rows reference blobs (`explain.workspace.blobs`) by sha256; runs, comments, decisions and
audit rows are never updated except a comment's resolved state, which is audited.
"""
from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy import false as sql_false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)  # bcrypt; None: OIDC only
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)  # the token itself is never stored
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Model(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "number"), UniqueConstraint("model_id", "sha256"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    number: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(500))
    size: Mapped[int] = mapped_column(Integer)
    spec_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # a spec JSON blob
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class VersionTag(Base):
    __tablename__ = "version_tags"
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(200), primary_key=True)


class Alias(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("model_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    name: Mapped[str] = mapped_column(String(200))
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))


class ProtectedAlias(Base):
    """An alias only admins and the named approvers may move, and only through an approving decision
    (`explain.workspace.registry`, migration ``0005``). It may name an alias that points nowhere yet."""

    __tablename__ = "protected_aliases"
    __table_args__ = (UniqueConstraint("model_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    name: Mapped[str] = mapped_column(String(200))
    approvers: Mapped[list] = mapped_column(JSON)  # user names, sorted
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Attachment(Base):
    __tablename__ = "attachments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    kind: Mapped[str] = mapped_column(String(40))  # "training_log" | "checkpoint"
    filename: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    page: Mapped[str] = mapped_column(String(40))  # "output" | "structure" | "training" | "overview"
    title: Mapped[str] = mapped_column(String(500))
    method: Mapped[str | None] = mapped_column(String(200), nullable=True)
    params: Mapped[dict] = mapped_column(JSON)
    target: Mapped[dict] = mapped_column(JSON)  # {"value": ...}: a list, an int or null
    inputs_sha256: Mapped[str] = mapped_column(String(64))  # .npz blob
    results_sha256: Mapped[str] = mapped_column(String(64))  # .npz blob
    summary: Mapped[dict] = mapped_column(JSON)  # quality figures, tables, findings
    environment: Mapped[dict] = mapped_column(JSON)  # packages, device, precision
    author: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Comment(Base):
    __tablename__ = "comments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("comments.id"), nullable=True)
    anchor_kind: Mapped[str] = mapped_column(String(20))  # "run" | "input" | "layer" | "finding"
    anchor: Mapped[str] = mapped_column(String(500))  # the input index, layer name or finding kind
    body: Mapped[str] = mapped_column(Text)
    author: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    resolved: Mapped[bool] = mapped_column(Boolean, default=False)
    resolved_by: Mapped[str | None] = mapped_column(String(200), nullable=True)


class Decision(Base):
    __tablename__ = "decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    verdict: Mapped[str] = mapped_column(String(20))  # "approve" | "request_changes"
    note: Mapped[str] = mapped_column(Text)
    alias: Mapped[str | None] = mapped_column(String(200), nullable=True)  # the alias approving moved
    author: Mapped[str] = mapped_column(String(200))
    comparison_run: Mapped[str | None] = mapped_column(String(32), nullable=True)  # the run it was made on
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(60))
    object_type: Mapped[str] = mapped_column(String(40))
    object_id: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    before: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class Job(Base):
    """One unit of long work in the queue (`explain.workspace.jobs`); its result is a saved run."""

    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # also the id of the run it saves
    kind: Mapped[str] = mapped_column(String(40))  # "explain" | "dataset" | ...
    title: Mapped[str] = mapped_column(String(500))
    owner: Mapped[str] = mapped_column(String(200), index=True)  # a user name or an API token's name
    owner_is_token: Mapped[bool] = mapped_column(Boolean, default=False)
    owner_is_operator: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sql_false())
    priority: Mapped[str] = mapped_column(String(20))  # "interactive" | "batch"
    status: Mapped[str] = mapped_column(String(20), index=True)  # queued|running|done|failed|cancelled
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1
    params: Mapped[dict] = mapped_column(JSON)
    inputs_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # .npz blob
    partial_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # a running job's partial result
    run_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class VettingResult(Base):
    """What vetting a user's graph found (`explain.loading.vetting`): kept by the file's sha256, the
    torch version and the vetting settings, so that no other process (a CLI call, a worker) vets the
    same file again (`explain.workspace.vetting`)."""

    __tablename__ = "vetting_results"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    torch_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    settings: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of what the probe depends on
    ok: Mapped[bool] = mapped_column(Boolean)
    max_batch_rows: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the largest vetted batch
    outcome: Mapped[dict] = mapped_column(JSON)  # the probe's measurements, or the refusal
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


#: Every column that names a blob (`explain.workspace.blobs`): what `Workspace.sweep_blobs` keeps. A new one
#: belongs here (tests/test_attack_orphan_blobs.py checks every ``*sha256`` column is here or in `NOT_BLOBS`).
BLOB_COLUMNS = (ModelVersion.sha256, ModelVersion.spec_sha256, Attachment.sha256, Run.inputs_sha256,
                Run.results_sha256, Job.inputs_sha256, Job.partial_sha256)
#: ``sha256`` columns that name no blob: a token's digest, a file vetting looked at
NOT_BLOBS = (ApiToken.token_sha256, VettingResult.sha256)
