"""`Finding`: a diagnosis about training or model quality, with its evidence.

`SEVERITIES` and `sort_findings` are the one order of findings: the page, the overview and
the report list the worst first. `SEVERITY_ICONS` is the one icon of each severity (pages and
report); `Finding.to_dict` / `Finding.from_dict` the one plain-JSON form (CLI output, report
data, saved runs).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from explain.jsonable import to_json_safe

#: every severity, mildest first.
SEVERITIES = ("info", "warning", "error")
#: the one icon of each severity, wherever a finding is listed (pages, report).
SEVERITY_ICONS = {"info": "ℹ️", "warning": "⚠️", "error": "🛑"}
#: the icon of a severity outside `SEVERITIES`.
UNKNOWN_ICON = "•"


@dataclass
class Finding:
    """One automatic finding.

    Attributes:
        kind: ``overfitting`` | ``best_epoch`` | ``plateau`` | ``divergence`` |
            ``instability`` | ``underfitting`` | ``lr_effect`` | ...
        severity: ``info`` | ``warning`` | ``error``.
        message: one sentence a reviewer can read.
        epochs: the epochs (or steps) the finding points at.
        evidence: the numbers behind it (values, thresholds, series names).
    """

    kind: str
    severity: str
    message: str
    epochs: list[float] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def icon(self) -> str:
        """The severity's icon (`SEVERITY_ICONS`)."""
        return SEVERITY_ICONS.get(self.severity, UNKNOWN_ICON)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values: kind, severity, message, epochs, evidence (numpy numbers as Python ones)."""
        return to_json_safe(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        """A finding back from `to_dict` (``epochs`` and ``evidence`` may be missing: older saved runs)."""
        return cls(kind=str(data["kind"]), severity=str(data["severity"]), message=str(data["message"]),
                   epochs=[float(e) for e in data.get("epochs") or []], evidence=dict(data.get("evidence") or {}))


def severity_rank(severity: str) -> int:
    """How bad a severity is: its place in `SEVERITIES` (``error`` highest); an unknown one is -1."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """The findings worst first (``error``, ``warning``, ``info``, then unknown severities).

    Stable: findings of one severity keep the order `explain.training.findings.diagnose` gave.
    """
    return sorted(findings, key=lambda f: -severity_rank(f.severity))
