"""The workspace as the command line sees it: opened from the environment, samples registered,
and the caller acting as the operator (whoever runs the CLI can read the database file anyway;
audit rows name them ``cli:<login>``)."""
from __future__ import annotations

import getpass

from explain.workspace import Actor, Workspace, open_workspace
from sample_models import sample_registry_files


def cli_actor() -> Actor:
    try:
        login = getpass.getuser()
    except Exception:  # no login name (a container without /etc/passwd entry)
        login = "operator"
    return Actor(f"cli:{login}", operator=True)


def cli_workspace() -> Workspace:
    """`open_workspace()` with the bundled samples registered (once per workspace)."""
    ws = open_workspace()
    ws.seed(sample_registry_files())
    return ws
