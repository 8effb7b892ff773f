"""`Finding`: a diagnosis about training or model quality, with its evidence."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

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
