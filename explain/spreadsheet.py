"""Text bound for a spreadsheet: every CSV Glassbox hands out (the audit log, an Output page's
attributions) writes its cells through `spreadsheet_safe`, since a cell's text may be anyone's (a user
name, a feature name from an uploaded spec)."""
from __future__ import annotations

from typing import Any

#: what a spreadsheet reads as the start of a formula (OWASP's CSV-injection advice)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """``value``, except a text a spreadsheet would run as a formula, which gets a leading ``'``;
    numbers are left as they are (a negative number is no formula)."""
    if isinstance(value, str) and value[:1] in FORMULA_STARTS:
        return "'" + value
    return value
