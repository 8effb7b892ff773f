"""`Finding`: a diagnosis about training or model quality, with its evidence.

`SEVERITIES` and `sort_findings` are the one order of findings: the page, the overview and
the report list the worst first.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

#: every severity, mildest first.
SEVERITIES = ("info", "warning", "error")


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def severity_rank(severity: str) -> int:
    """How bad a severity is: its place in `SEVERITIES` (``error`` highest); an unknown one is -1."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """The findings worst first (``error``, ``warning``, ``info``, then unknown severities).

    Stable: findings of one severity keep the order `explain.training.findings.diagnose` gave.
    """
    return sorted(findings, key=lambda f: -severity_rank(f.severity))
