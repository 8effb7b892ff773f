"""Review: threaded comments anchored to a run (or one input, layer or finding of it), and
decisions on model versions (approve / request changes, optionally moving an alias, optionally
naming the comparison run they were made on; a protected alias moves only with one, see
`explain.workspace.registry`).

Comment bodies are stored as typed; the page renders them as Markdown with raw HTML off,
the report escapes them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import select

from explain.errors import NotFound, UsageError
from explain.workspace.core import Core, iso
from explain.workspace.registry import Registry, parse_ref
from explain.workspace.roles import Action, Actor
from explain.workspace.runs import PAGES
from explain.workspace.schema import Comment, Decision, Model, ModelVersion, Run

ANCHOR_KINDS = ("run", "input", "layer", "finding")
VERDICTS = ("approve", "request_changes")
MAX_COMMENT = 20_000
#: The run kind a decision's comparison must be, once some writer saves it (`runs.PAGES`); until
#: then any saved run is accepted.
COMPARISON = "comparison"


@dataclass(frozen=True)
class CommentInfo:
    id: int
    run_id: str
    parent_id: int | None
    anchor_kind: str
    anchor: str
    body: str
    author: str
    created: str
    resolved: bool
    resolved_by: str | None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def anchor_label(self) -> str:
        return "the run" if self.anchor_kind == "run" else f"{self.anchor_kind} {self.anchor}"


@dataclass(frozen=True)
class DecisionInfo:
    id: int
    model: str
    version: int
    verdict: str
    note: str
    alias: str | None
    author: str
    created: str
    comparison_run: str | None = None  # the saved comparison the decision was made on

    def to_dict(self) -> dict:
        return asdict(self)


def _decision(d: Decision, model: str, version: int) -> DecisionInfo:
    return DecisionInfo(d.id, model, version, d.verdict, d.note, d.alias, d.author, iso(d.created_at),
                        d.comparison_run)


@dataclass(frozen=True)
class Thread:
    """An open (or resolved) comment with its replies, and the run and version it is on."""

    root: CommentInfo
    replies: list[CommentInfo]
    run_title: str
    model: str
    version: int


def _comment(c: Comment) -> CommentInfo:
    return CommentInfo(c.id, c.run_id, c.parent_id, c.anchor_kind, c.anchor, c.body, c.author, iso(c.created_at),
                       c.resolved, c.resolved_by)


class Review:
    def __init__(self, core: Core, registry: Registry):
        self.core = core
        self.registry = registry

    # -- comments ------------------------------------------------------------------
    def post(self, actor: Actor, run_id: str, body: str, anchor_kind: str = "run", anchor: str = "",
             parent_id: int | None = None) -> CommentInfo:
        body = (body or "").strip()
        if not body:
            raise UsageError("The comment is empty.")
        if len(body) > MAX_COMMENT:
            raise UsageError(f"The comment is longer than {MAX_COMMENT} characters.")
        if anchor_kind not in ANCHOR_KINDS:
            raise UsageError(f"Unknown anchor {anchor_kind!r}.", f"Choose one of {', '.join(ANCHOR_KINDS)}.")
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.COMMENT)
            if s.get(Run, run_id) is None:
                raise NotFound(f"No saved run {run_id!r}.")
            if parent_id is not None:
                parent = s.get(Comment, parent_id)
                if parent is None or parent.run_id != run_id:
                    raise NotFound(f"No comment {parent_id} on run {run_id}.")
                anchor_kind, anchor = parent.anchor_kind, parent.anchor  # a reply stays on its thread's anchor
            row = Comment(run_id=run_id, parent_id=parent_id, anchor_kind=anchor_kind,
                          anchor="" if anchor_kind == "run" else str(anchor)[:500], body=body, author=actor.name,
                          resolved=False)
            s.add(row)
            s.flush()
            self.core.audit(s, actor, "comment.post", "comment", row.id,
                            after={"run": run_id, "anchor": f"{anchor_kind}:{row.anchor}", "parent": parent_id})
            return _comment(row)

    def set_resolved(self, actor: Actor, comment_id: int, resolved: bool) -> CommentInfo:
        """Resolve or reopen a thread (by its first comment)."""
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.COMMENT)
            row = s.get(Comment, comment_id)
            if row is None:
                raise NotFound(f"No comment {comment_id}.")
            if row.parent_id is not None:
                raise UsageError("Resolve the thread's first comment, not a reply.")
            before = row.resolved
            row.resolved, row.resolved_by = bool(resolved), actor.name if resolved else None
            self.core.audit(s, actor, "comment.resolve" if resolved else "comment.reopen", "comment", comment_id,
                            before={"resolved": before}, after={"resolved": bool(resolved)})
            return _comment(row)

    def comments(self, actor: Actor, run_id: str) -> list[CommentInfo]:
        """Every comment on a run, oldest first."""
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.READ)
            if s.get(Run, str(run_id)[:32]) is None:
                raise NotFound(f"No saved run {str(run_id)[:40]!r}.")
            rows = s.scalars(select(Comment).where(Comment.run_id == run_id).order_by(Comment.id))
            return [_comment(c) for c in rows]

    def threads(self, actor: Actor, model: str | None = None, version: int | None = None,
                include_resolved: bool = False) -> list[Thread]:
        """Threads (root comment + replies) per run, of one model / version if given; open ones only
        unless ``include_resolved``. Ordered by model, version, then the thread's age."""
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.READ)
            query = (select(Comment, Run, ModelVersion, Model)
                     .join(Run, Comment.run_id == Run.id)
                     .join(ModelVersion, Run.version_id == ModelVersion.id)
                     .join(Model, ModelVersion.model_id == Model.id))
            if model is not None:
                query = query.where(Model.name == model)
            if version is not None:
                query = query.where(ModelVersion.number == version)
            rows = s.execute(query.order_by(Model.name, ModelVersion.number, Comment.id)).all()
        replies: dict[int, list[CommentInfo]] = {}
        roots = []
        for c, run, v, m in rows:
            if c.parent_id is None:
                if include_resolved or not c.resolved:
                    roots.append((c, run, v, m))
            else:
                replies.setdefault(c.parent_id, []).append(_comment(c))
        return [Thread(_comment(c), replies.get(c.id, []), run.title, m.name, v.number) for c, run, v, m in roots]

    # -- decisions -----------------------------------------------------------------
    def decide(self, actor: Actor, model: str, version: int, verdict: str, note: str = "",
               move_alias: str | None = None, comparison_run: str | None = None) -> DecisionInfo:
        """Record a verdict on a version; approving may move an alias to it (both or neither).

        Moving an alias otherwise needs an editor; through an approval the reviewer's decision is
        what moves it (that is what approving a ``candidate`` into ``production`` means). A
        protected alias moves only through the approval of an admin or one of its approvers, with
        ``note`` (the justification) and ``comparison_run`` (`_check_comparison`).

        Raises:
            PermissionDenied: below reviewer, or a protected alias and not an admin or approver.
            NotFound: no such version, or no such comparison run.
            UsageError: a bad verdict, a comparison of other models, a protected move without a
                justification or a comparison.
        """
        if verdict not in VERDICTS:
            raise UsageError(f"Unknown verdict {verdict!r}.", f"Choose one of {', '.join(VERDICTS)}.")
        if move_alias and verdict != "approve":
            raise UsageError("Only an approval moves an alias.")
        comparison_run = (comparison_run or "").strip() or None
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.DECIDE)
            version_id = self.registry.version_id(s, model, version)
            if comparison_run is not None:
                self._check_comparison(s, model, comparison_run)
            row = Decision(version_id=version_id, verdict=verdict, note=(note or "").strip()[:MAX_COMMENT],
                           alias=move_alias or None, author=actor.name, comparison_run=comparison_run)
            s.add(row)
            s.flush()
            if move_alias:
                self.registry.move_alias_in(s, actor, model, move_alias, version, decision_id=row.id)
            after = {"note": row.note, "alias": move_alias}
            if comparison_run is not None:
                after["comparison"] = comparison_run
            self.core.audit(s, actor, f"decision.{verdict}", "model_version", f"{model}@v{version}", after=after)
            return _decision(row, model, version)

    @staticmethod
    def _check_comparison(s, model: str, run_id: str) -> None:
        """``run_id`` is a saved run (every member reads every run) of kind `COMPARISON` once that kind
        is saved at all, and compares a version of ``model``: its own version, or an ``a`` / ``b``
        reference in its parameters naming it."""
        run = s.get(Run, run_id) if len(run_id) <= 32 else None  # ids are at most 32 characters
        if run is None:
            raise NotFound(f"No saved run {run_id[:40]!r} to record as the comparison.",
                           "`python -m explain runs list` lists the saved runs.")
        if COMPARISON in PAGES and run.page != COMPARISON:
            raise UsageError(f"Run {run_id} is a {run.page} run, not a comparison.",
                             "Name the saved comparison of the two versions.")
        own = s.scalar(select(Model.name).join(ModelVersion, ModelVersion.model_id == Model.id)
                       .where(ModelVersion.id == run.version_id))
        named = {parse_ref(ref)[0] for key in ("a", "b") if isinstance(ref := (run.params or {}).get(key), str)}
        if model != own and model not in named:
            raise UsageError(f"Run {run_id} compares {', '.join(sorted(named | {own}))}, not {model}.",
                             f"Name a comparison of a version of {model}.")

    def decisions(self, actor: Actor, model: str, version: int | None = None) -> list[DecisionInfo]:
        """The decision history of a model (or one version), oldest first."""
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.READ)
            query = (select(Decision, ModelVersion).join(ModelVersion, Decision.version_id == ModelVersion.id)
                     .join(Model, ModelVersion.model_id == Model.id).where(Model.name == model))
            if version is not None:
                query = query.where(ModelVersion.number == version)
            return [_decision(d, model, v.number) for d, v in s.execute(query.order_by(Decision.id))]
