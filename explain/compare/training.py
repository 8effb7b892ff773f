"""Both versions' training logs, read for one overlaid figure (`explain.viz.training.figure_runs`)."""
from __future__ import annotations

from collections.abc import Sequence

from explain.training.history import TrainingHistory, merge_histories, read_history

#: a version's logs: (file name, bytes) each
Logs = Sequence[tuple[str, bytes]]


def version_history(logs: Logs, label: str) -> TrainingHistory | None:
    """One version's logs as one history named ``label`` (several files: merged as one run's); None without logs.

    Raises:
        CorruptFile / IncompatibleInput / TooLarge: a log that does not read (`read_history`).
    """
    if not logs:
        return None
    history = merge_histories([read_history((name, data)) for name, data in logs], name=label)
    history.name = label
    return history


def training_histories(logs_a: Logs, logs_b: Logs, labels: tuple[str, str] = ("A", "B")) -> list[TrainingHistory]:
    """The histories to overlay: A's then B's, each only where that version has logs."""
    return [h for h in (version_history(logs_a, labels[0]), version_history(logs_b, labels[1])) if h is not None]
