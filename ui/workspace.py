"""The team workspace in the app: who is signed in, the Save-run button, share links.

Sign-in: with an ``[auth]`` section in ``.streamlit/secrets.toml`` through ``st.login`` (OIDC);
otherwise local accounts through streamlit-authenticator (a signed JWT cookie keeps the
sign-in across reloads and links). A workspace with no accounts runs as the single local
user. The role is looked up in the workspace on every call (`explain.workspace`), never
kept in the session, so hiding a button is a courtesy, not the check.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from urllib.parse import urlencode, urlsplit, urlunsplit

import streamlit as st

from explain.config import database_url, external_worker, glassbox_home
from explain.digest import digest_bytes
from explain.errors import GlassboxError
from explain.model import LoadedModel
from explain.service.client import model_name_from_file, register_model
from explain.workspace import Action, Actor, RunRecord, Workspace
from explain.workspace.registry import VersionInfo
from explain.workspace.roles import allows
from ui import state
from ui.first_paint import seeded_workspace as _open  # opened there: the first paint checks for accounts
from ui.sample_choice import shipped_first_view
from ui.text import escape_markdown

log = logging.getLogger("glassbox.ui")

COOKIE_NAME = "glassbox_session"
COOKIE_DAYS = 14
SIGN_IN_FIELDS = {"Form name": "Sign in to Glassbox", "Username": "Username", "Password": "Password",
                  "Login": "Sign in"}


def workspace() -> Workspace:
    """The workspace of this server (`explain.config.database_url`, blobs in ``GLASSBOX_HOME``)."""
    url, home = database_url(), str(glassbox_home())
    ws = _open(url, home)
    _recover(url, home)
    return ws


@st.cache_resource(show_spinner=False)
def _recover(url: str, home: str) -> bool:
    """Once per server process, before its first page draws (the sign-in form's too): jobs a killed
    server of this host left "running" go back to the queue and the embedded workers start, so they
    run with no page open (Streamlit runs no app code before a first session connects)."""
    from explain.service.worker import recover_now, start_embedded

    try:
        if external_worker():
            recover_now(_open(url, home))
        else:  # recovers first, then runs them
            start_embedded(_open(url, home))
    except Exception:  # the queue's workers retry it; the pages must still open
        log.exception("Taking back the jobs of stopped workers failed")
    return True


def oidc_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets.toml at all
        return False


def _oidc_signed_in() -> bool:
    return bool(st.user.get("is_logged_in", False))


# -- who is signed in ------------------------------------------------------------------------
def oidc_name(claims) -> str | None:
    """The member an OIDC sign-in acts as: its e-mail only where the provider says it verified it
    (``email_verified``), else its subject (``sub``), never an address someone merely typed: an unverified
    ``email`` (a self-sign-up, a multi-tenant directory's mail attribute) signed a stranger in as the
    member of that address."""
    email = claims.get("email")
    if email and claims.get("email_verified") in (True, "true"):  # some providers send the claim as text
        return str(email)
    sub = claims.get("sub")
    return str(sub) if sub else None


def current_actor() -> Actor | None:
    """The signed-in user (the local user while the workspace has no accounts); None: nobody yet."""
    ws = workspace()
    if not ws.users.any_accounts():
        return Actor.local()
    if oidc_configured():
        if not _oidc_signed_in():
            return None
        name = oidc_name(st.user)
        return Actor(name) if name else None
    name = _signed_in_name(ws)
    return Actor(name) if name else None


def role() -> str | None:
    actor = current_actor()
    return workspace().users.role_of(actor) if actor else None


def can(action: Action) -> bool:
    """Whether the signed-in user may ``action`` now (to decide what to show; the library checks again)."""
    return allows(role(), action)


#: What a page that would run the model says to a viewer or reviewer instead.
EXPLAIN_NEEDS_EDITOR = "Explaining needs the editor role — open a saved run or a registered version."


def stop_unless_may_explain() -> None:
    """On a page that runs the model live: for anyone below editor (`Action.LOAD_MODEL`), say so,
    link to the saved runs and the registry, and stop the page (the library refuses the load anyway)."""
    if can(Action.LOAD_MODEL):
        return
    st.info(f"{EXPLAIN_NEEDS_EDITOR} Your role is {escape_markdown(role() or 'none')}, which reads what editors "
            "saved: [Saved runs](/runs) · [Models](/models).", icon=":material/lock:")
    st.stop()


def actor() -> Actor:
    """`current_actor`, or stop the page if nobody is signed in (app.py's gate shows the form)."""
    who = current_actor()
    if who is None:
        st.stop()
    return who


#: the account identity (`explain.workspace.users.identity_of`) this session signed in as: checked on every run
IDENTITY_KEY = "gb_signed_in_identity"


def _bound_cookie(ws: Workspace, credentials: dict, made):
    """streamlit-authenticator's cookie ``made`` (its cookie manager is one element of the page: not made twice),
    bound to the account's identity: written with the identity of the hash the password was checked against,
    read back only while the account is that one (`Users.signed_in_as`)."""
    from streamlit_authenticator.models import CookieModel

    from explain.workspace.users import sign_session

    class BoundCookie(CookieModel):
        def get_cookie(self):
            if st.session_state.get("logout"):
                return False
            token = st.context.cookies.get(COOKIE_NAME)
            found = ws.users.signed_in_as(ws.session_key(), token) if token else None
            if found is None:
                return None
            st.session_state[IDENTITY_KEY] = found[1]
            return {"username": found[0]}

        def _token_encode(self) -> str:
            name = st.session_state["username"]
            identity = credentials["usernames"][name]["identity"]
            st.session_state[IDENTITY_KEY] = identity
            return sign_session(ws.session_key(), name, identity, COOKIE_DAYS)

    bound = BoundCookie.__new__(BoundCookie)
    bound.__dict__.update(vars(made))
    return bound


def _authenticator():
    import streamlit_authenticator as stauth

    ws = workspace()
    credentials = ws.users.credentials()
    auth = stauth.Authenticate(credentials, COOKIE_NAME, ws.session_key(), COOKIE_DAYS,
                               auto_hash=False, login_sleep_time=0)
    auth.cookie_controller.cookie_model = _bound_cookie(ws, credentials, auth.cookie_controller.cookie_model)
    st.session_state["gb_authenticator"] = auth
    return auth


def _signed_in_name(ws: Workspace) -> str | None:
    """The local account this session signed in as, while it is still that account: removed, added again or
    given a new password, it is not, and the session is signed out (as its cookie no longer reads)."""
    name = st.session_state.get("username")
    if not (st.session_state.get("authentication_status") and name):
        return None
    now = ws.users.identity(str(name))
    # a session the sign-in did not bind (one a test set up) is bound to the account it first meets
    bound = st.session_state.setdefault(IDENTITY_KEY, now)
    if now is not None and now == bound:
        return str(name)
    for key in ("authentication_status", "username", "name"):
        st.session_state[key] = None  # as streamlit-authenticator's sign-out leaves them
    st.session_state.pop(IDENTITY_KEY, None)
    return None


def sign_in_gate() -> bool:
    """Show the sign-in form when sign-in is required and nobody is signed in; True: go on."""
    ws = workspace()
    if not ws.users.any_accounts():
        return True
    if oidc_configured():
        if _oidc_signed_in():
            return _member_or_refuse()
        st.title("Sign in to Glassbox")
        st.button("Sign in", type="primary", on_click=st.login)
        return False
    auth = _authenticator()
    if _signed_in_name(ws) is None:  # nobody, or an account since removed, added again or given a new password
        auth.login(location="main", fields=SIGN_IN_FIELDS, key="gb_sign_in")
        if st.session_state.get("authentication_status") is False:
            st.error("Username or password is wrong.")
        if not st.session_state.get("authentication_status"):
            return False
    return _member_or_refuse()


def _member_or_refuse() -> bool:
    who = current_actor()
    if who is not None and workspace().users.role_of(who) is not None:
        return True
    st.error(f"{escape_markdown(who.name if who else 'This account')} is not a member of this workspace. "
             "Ask an admin to add you: `python -m explain users add NAME --role viewer`.")
    sign_out_button()
    return False


def sign_out_button() -> None:
    if oidc_configured():
        st.button("Sign out", on_click=st.logout, key="gb_sign_out")
        return
    auth = st.session_state.get("gb_authenticator")
    if auth is not None:
        auth.logout("Sign out", location="main", key="gb_sign_out")


def render_account() -> None:
    """The sidebar's account line: who, which role, sign out; or that Glassbox runs single-user."""
    ws = workspace()
    if not ws.users.any_accounts():
        st.caption("Single local user: no accounts yet, so no sign-in. "
                   "`python -m explain users add NAME --role admin` turns sign-in on.")
        return
    who = current_actor()
    if who is None:
        return
    st.caption(f"Signed in as **{escape_markdown(who.name)}** · {role() or 'not a member'}")
    sign_out_button()


# -- registry and runs from the pages ---------------------------------------------------------
def current_version(model: LoadedModel, *, register: bool) -> VersionInfo | None:
    """The registry version of the current model: found by its sha256, or (``register``) added
    under the upload's file name. None when it is not registered and may not be."""
    ws, who = workspace(), actor()
    found = ws.registry.find_by_sha(who, model.sha256)
    if found is not None or not register:
        return found
    blob = state.model_upload()
    if blob is None or blob.sha256 != model.sha256:
        return None
    return register_model(ws, who, model, blob.data, blob.name, model_name_from_file(blob.name))


def share_link(**params: str) -> str:
    """This app's URL with ``params`` as the query (e.g. ``run=ID``), from the browser's own address."""
    try:
        base = st.context.url or ""
    except Exception:
        base = ""
    parts = urlsplit(base)
    path = "/"  # the router opens ?run= / ?model= links on any path; the root is the shortest
    return urlunsplit((parts.scheme or "http", parts.netloc or "localhost:8501", path, urlencode(params), ""))


def render_share_link(label: str, **params: str) -> None:
    st.caption(label)
    st.code(share_link(**params), language=None)  # st.code has a copy button


def render_save_run(page: str, model: LoadedModel, build: Callable[[str, int], RunRecord], key: str,
                    attach: Sequence[tuple[str, str, bytes]] = (), shows: str = "") -> None:
    """A "Save run" button (editors and admins): registers the model if needed, saves ``build(name,
    version)`` as an immutable run and shows its share link while the page shows what was saved
    (``shows``: a digest of it, e.g. the uploads; the link goes once it changes). ``attach``:
    ``(kind, filename, bytes)`` training logs / checkpoints attached to the model version too (each stored once)."""
    if not can(Action.SAVE_RUN):
        return
    saved_key = f"gb_saved_run_{key}"
    if st.button("Save run", key=f"gb_save_{key}", help="Store exactly what this page shows, with a link to it."):
        with state.error_boundary("Saving the run"):
            version = current_version(model, register=True)
            if version is None:
                raise GlassboxError("This model is not in the workspace and could not be registered.")
            info = workspace().runs.save(actor(), build(version.name, version.version))
            known = {(a.kind, a.sha256) for a in workspace().registry.attachments(actor(), version.name,
                                                                                   version.version)}
            for kind, filename, data in attach:
                if (kind, digest_bytes(data)) not in known:
                    workspace().registry.attach(actor(), version.name, version.version, kind, data, filename)
            st.session_state[saved_key] = (shows, info.id)
    saved_shows, run_id = st.session_state.get(saved_key, ("", None))
    if run_id and saved_shows == shows:
        render_share_link(f"Saved as run `{run_id}`. Link to it:", run=run_id)


# -- a sample's first view, saved once (`explain.report.overview`) -------------------------------
def recall_first_view(model: LoadedModel, x, index: int, method: str) -> bool:
    """Before the Overview computes a sample's first view (input #0, the default method): read it
    back, from the file shipped beside the sample or the run saved the first time this workspace opened
    it (`explain.report.first_view.find_first_view`), so no layer table or map is computed; True when it
    was read. Anything else (another input, method or model) computes."""
    from explain.report import overview
    from explain.report.first_view import find_first_view

    name = state.current_sample_name()
    if name is None or index != 0 or method != overview.DEFAULT_METHOD or overview.is_computed(model, x, method):
        return False
    ws, run_id = workspace(), overview.first_view_id(model, x, method)
    first = find_first_view(run_id, shipped_first_view(name), ws, actor())
    if first is None:  # none saved yet (or not readable): the page computes it, then `keep_first_view`
        return False
    _KEPT.add((ws.home, run_id))  # shipped or saved: nothing to save
    return overview.remember_first_view(first, model)


def keep_first_view(model: LoadedModel, x, index: int, method: str) -> None:
    """After the Overview computed a sample's first view: save it once, by the workspace itself (the
    seeder, an operator), under the id every process asks for (`overview.first_view_id`)."""
    from explain.report import overview
    from explain.workspace import SEEDER

    if state.current_sample_name() is None or index != 0 or method != overview.DEFAULT_METHOD:
        return
    ws, run_id = workspace(), overview.first_view_id(model, x, method)
    if (ws.home, run_id) in _KEPT or not overview.is_computed(model, x, method):
        return  # every rerun of the Overview comes here: no registry query once it is kept
    version = current_version(model, register=False)
    if version is None:
        return
    try:  # `Runs.save` with this id returns the run saved before, if any, without writing again
        ws.runs.save(SEEDER, overview.first_view_record(version.name, version.version, model, x, index, method),
                     run_id=run_id)
        _KEPT.add((ws.home, run_id))
    except Exception:  # another server saved it meanwhile, or the database is busy: the next open tries again
        log.exception("Saving the first view of %s failed", model.name)


_KEPT: set = set()  # (workspace home, first-view run id) saved or found by this process
