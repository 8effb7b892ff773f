"""Attack A1 on the workspace library's permissions, as a member would try them."""
from __future__ import annotations

import pytest

from explain.errors import PermissionDenied
from explain.workspace import Actor

pytest_plugins = ["tests.workspace_db"]

OP = Actor("cli:ops", operator=True)


def test_an_account_named_as_the_operator_may_not_cancel_its_jobs(workspace):
    """The command line acts as ``cli:<login>`` (`cli_actor`); an account of that name (a viewer) was
    taken for the job's owner, as only the name and the token flag were compared."""
    workspace.users.add(OP, "admin", "admin")
    job = workspace.jobs.submit(OP, "test", {}, title="the operator's job")
    workspace.users.add(OP, "cli:ops", "viewer")
    with pytest.raises(PermissionDenied):
        workspace.jobs.cancel(Actor("cli:ops"), job.id)
    assert workspace.jobs.get(Actor("admin"), job.id).status == "queued"
    assert workspace.jobs.cancel(OP, job.id).status == "cancelled"  # the operator itself still may


AUTH = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32, "client_id": "glassbox",
        "client_secret": "s", "server_metadata_url": "https://idp.example/.well-known/openid-configuration"}


def _oidc_app(user: dict):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=300)
    at.secrets["auth"] = AUTH
    at.user = {"is_logged_in": True, **user}
    return at.run()


def test_an_unverified_oidc_email_is_not_the_member_of_that_address(home):
    """The OIDC sign-in acted as its ``email`` claim whatever the provider said of it: at a provider that
    lets anyone type an address (self-sign-up, a multi-tenant directory's mail attribute), a stranger
    signed in as the admin of that address."""
    _, ws = home
    ws.users.add(Actor.local(), "ada@example.com", "admin", None, email="ada@example.com")
    stranger = _oidc_app({"email": "ada@example.com", "email_verified": False, "sub": "mallory"})
    assert not stranger.exception, stranger.exception
    assert any("mallory is not a member" in e.value for e in stranger.error), [e.value for e in stranger.error]
    assert not any("Signed in as" in c.value for c in stranger.sidebar.caption)
    ada = _oidc_app({"email": "ada@example.com", "email_verified": True, "sub": "ada"})
    assert not ada.exception and not ada.error, (ada.exception, [e.value for e in ada.error])
    assert any(c.value.startswith("Signed in as **ada") and "example" in c.value and c.value.endswith("** · admin")
               for c in ada.sidebar.caption), [c.value for c in ada.sidebar.caption]


def _load_as(user: str, run_id: str):
    from streamlit.testing.v1 import AppTest

    def script():
        import streamlit as st

        from explain.workspace import Actor
        from ui import run_view
        from ui import workspace as team

        run = team.workspace().runs.open(Actor("cli:t", operator=True), st.session_state["rid"])
        try:
            st.write(f"loaded {run_view.run_model(run).name}")
        except Exception as exc:  # noqa: BLE001 - the test reads which
            st.write(f"refused {type(exc).__name__}")

    at = AppTest.from_function(script, default_timeout=300)
    at.session_state["authentication_status"] = True
    at.session_state["username"] = user
    at.session_state["rid"] = run_id
    return [m.value for m in at.run().markdown]


def test_a_viewer_loads_no_model_through_the_page_glue(home):
    """A run's Re-run and report load its version through `ui.state.open_model` (so do the Compare page's
    uploads); only the buttons were hidden from a viewer, the load itself asked no role: the library
    refused the job after the viewer's model was loaded and vetted. `open_model` now asks
    `Workspace.load_model`."""
    from explain.workspace import RunRecord

    _, ws = home
    op = Actor("cli:t", operator=True)
    ws.users.add(op, "admin", "admin")
    ws.users.add(op, "vic", "viewer")
    ws.users.add(op, "eddie", "editor")
    run = ws.runs.save(op, RunRecord(page="overview", model="shapes", version=1, title="t"))
    assert _load_as("vic", run.id) == ["refused PermissionDenied"]
    assert _load_as("eddie", run.id) == ["loaded shapes"]


def test_a_viewer_builds_no_checkpoint_model_through_the_library(workspace):
    """The Training page's checkpoint models (`evolution.model_at`, the drift's) called `load_model`
    directly: only the page's role gate stood before them. With a workspace they go through
    `Workspace.load_model`, the one check: a viewer is refused, an editor gets the checkpoint's weights."""
    import numpy as np
    import torch

    from explain.model import LoadedModel
    from explain.spec import InputSpec
    from explain.training.checkpoints import Checkpoint
    from explain.training.evolution import model_at

    workspace.users.add(OP, "admin", "admin")
    workspace.users.add(OP, "ada", "editor")
    workspace.users.add(OP, "vic", "viewer")
    spec = InputSpec("tabular", (3,), class_names=["a", "b"])
    reference = LoadedModel(module=torch.nn.Linear(3, 2).eval(), format="checkpoint", sha256="x", spec=spec, name="m")
    weights = {"weight": torch.tensor([[1.0, 0, 0], [0, 2.0, 0]]), "bias": torch.tensor([0.5, -0.5])}
    ckpt = Checkpoint("epoch 2", 2.0, weights, "epoch_2.pt", data=b"checkpoint bytes")
    with pytest.raises(PermissionDenied):
        model_at(ckpt, reference, workspace=workspace, actor=Actor("vic"))
    model = model_at(ckpt, reference, workspace=workspace, actor=Actor("ada"))
    np.testing.assert_allclose(model.predict_logits(np.array([[1.0, 1.0, 1.0]], dtype=np.float32)), [[1.5, 1.5]])
