"""Workspace fixtures: one fresh workspace per test, on SQLite and on a real PostgreSQL server.

Use from a test module with ``pytest_plugins = ["tests.workspace_db"]``:

    db_url      a fresh, empty database URL, parametrised ``sqlite`` / ``postgresql``
    workspace   ``open_workspace(db_url, home=tmp)``, closed after the test
    postgres    the session's `PostgresServer` (started on first use, stopped at session end)

The PostgreSQL server is Debian's ``postgresql`` package run by hand: ``initdb`` in a temporary
folder, ``pg_ctl start`` on a free localhost port with its socket in that folder, trust auth.
Every test gets its own database (``CREATE DATABASE``), dropped afterwards. PostgreSQL refuses
to run as root, so as root the cluster belongs to the ``postgres`` user (which the Debian
package creates), else ``nobody``. Without the binaries the PostgreSQL tests are skipped,
unless ``GLASSBOX_REQUIRE_POSTGRES=1`` (CI), where that is a failure.
"""
from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

BACKENDS = ("sqlite", "postgresql")


def _require_postgres() -> bool:
    return os.environ.get("GLASSBOX_REQUIRE_POSTGRES") == "1"


def postgres_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: from PATH, else Debian's newest
    ``/usr/lib/postgresql/<major>/bin`` (the package does not put them on PATH)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl", path=str(Path(found).resolve().parent)):
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user() -> pwd.struct_passwd | None:
    """Whom to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path  # data/, the socket and the log
    port: int
    user: pwd.struct_passwd | None
    running: bool = False

    @property
    def admin_conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=10"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        kwargs = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C", "LC_ALL": "C"}
        return subprocess.run([str(self.bin_dir / args[0]), *args[1:]], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=self.root, **kwargs)

    def start(self) -> None:
        init = self._run("initdb", "-D", str(self.root / "data"), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                         "--locale=C", "--no-sync")
        if init.returncode:
            raise RuntimeError(f"initdb failed: {(init.stderr or init.stdout).strip()[-600:]}")
        # A throwaway test cluster: no fsync (the tests kill clients, never this server).
        options = (f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c max_connections=200")
        started = self._run("pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "server.log"), "-w",
                            "-t", "60", "-o", options, "start")
        if started.returncode:
            log = (self.root / "server.log").read_text(errors="replace")[-800:] if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {(started.stderr or started.stdout).strip()[-400:]} {log}")
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.running = False
            try:
                self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop", timeout=60)
            except (OSError, subprocess.SubprocessError):
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self) -> str:
        """A new empty database; its SQLAlchemy URL (psycopg 3)."""
        import psycopg

        name = "gbx_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.admin_conninfo, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.admin_conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_SERVER: PostgresServer | None = None


def postgres_server() -> PostgresServer:
    """The one PostgreSQL server of this test session (started on first call); skips the test when
    PostgreSQL is not installed, fails it instead under ``GLASSBOX_REQUIRE_POSTGRES=1``."""
    global _SERVER
    if _SERVER is not None:
        return _SERVER
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        why = "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin; apt-get install -y postgresql)"
        if _require_postgres():
            pytest.fail(f"PostgreSQL tests are required (GLASSBOX_REQUIRE_POSTGRES=1) but {why}")
        pytest.skip(why)
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="glassbox-pg-", dir="/tmp" if user is not None else None))
    if user is not None:  # the server's own user must own its folder
        os.chown(root, user.pw_uid, user.pw_gid)
    server = PostgresServer(bin_dir, root, _free_port(), user)
    try:
        server.start()
    except Exception as exc:
        server.stop()
        pytest.fail(f"Could not start a PostgreSQL test server from {bin_dir}: {exc}")
    atexit.register(server.stop)  # also when the session ends without fixture teardown
    _SERVER = server
    return server


@pytest.fixture(scope="session")
def postgres():
    server = postgres_server()
    yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path):
    """A fresh empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'glassbox.db'}"
        return
    server = request.getfixturevalue("postgres")
    url = server.create_database()
    yield url
    server.drop_database(url)


@pytest.fixture
def workspace(db_url, tmp_path):
    """A migrated, empty workspace (no accounts, no models) with its blobs under ``tmp_path/home``."""
    from explain.workspace import open_workspace

    ws = open_workspace(db_url, home=tmp_path / "home")
    yield ws
    ws.close()
