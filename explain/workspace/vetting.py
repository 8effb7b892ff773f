"""Vetting results kept in the workspace (`explain.loading.vetting.VettingMemory`).

    model = load_model(data, vetted=ws.vetting)   # vetted once per file, torch version and settings

Vetting a TorchScript or ``.pt2`` graph runs it in a sandboxed child at every batch size; its
outcome (the largest vetted batch and what was measured, or the refusal) depends only on the
file's bytes, the torch version and the vetting settings, so it is kept under those and read back
by every later process: a CLI call, a worker, the API. No role is checked: this is what the
loader learnt about a file, not anybody's data, and it is written only by the loader. A failure
to read or write it is no failure of the load: the graph is then vetted as if nothing were kept.
"""
from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from explain.workspace.core import Core
from explain.workspace.schema import VettingResult

log = logging.getLogger("glassbox.workspace")


class VettingResults:
    def __init__(self, core: Core):
        self.core = core

    def get(self, sha256: str, torch_version: str, settings: str) -> dict[str, Any] | None:
        """The outcome kept for this file, torch version and settings, or None."""
        try:
            with self.core.db.transaction() as s:
                row = s.scalar(select(VettingResult.outcome).where(
                    VettingResult.sha256 == sha256, VettingResult.torch_version == torch_version,
                    VettingResult.settings == settings))
        except Exception as exc:  # noqa: BLE001 - a cache: vet again rather than fail
            log.info("vetting results could not be read: %s", exc)
            return None
        return row if isinstance(row, dict) else None

    def put(self, sha256: str, torch_version: str, settings: str, outcome: dict[str, Any]) -> None:
        """Keep ``outcome`` (``{"ok": True, "probe": {...}}`` or ``{"ok": False, ...}``); a row another
        process wrote first is kept (the same file vetted the same way)."""
        probe = outcome.get("probe") or {}
        try:
            with self.core.db.transaction() as s:
                s.add(VettingResult(sha256=sha256, torch_version=torch_version, settings=settings,
                                    ok=bool(outcome.get("ok")), max_batch_rows=probe.get("max_batch_rows"),
                                    outcome=outcome))
        except IntegrityError:
            pass
        except Exception as exc:  # noqa: BLE001 - a cache
            log.info("vetting result could not be kept: %s", exc)
