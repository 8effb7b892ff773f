"""App latency against a torch import timed in the same run (issue 21, "No waiting").

Rows, each round in turn (a torch import first, so a machine whose speed drifts moves them alike):

- ``torch_import``: ``import torch`` alone in a fresh interpreter (the yardstick);
- ``server_ready``: ``streamlit run app.py`` on a new workspace until its health check answers;
- ``first_title``: a browser (headless Chromium) opens the app on a fresh server: seconds until the page's
  title (h1) is drawn;
- ``first_figure``: a browser (headless Chromium) opens the app (the Overview, the default sample)
  on that fresh server: seconds until the first figure is drawn (target 3 s);
- ``first_map``: ... until the Output column's attribution map and its completeness caption (a fresh
  server's first run is `ui.first_paint`'s torch-free preview, which draws the sample's first view shipped
  beside it (`explain.report.first_view`): the map comes with the preview, before the curves);
- ``again_first_figure``: a second browser tab opens the same view (computed already);
- ``restart_first_figure`` / ``restart_first_map``: the server stopped and started again on the same
  workspace (an operator's restart): the sample's first view is read back from the run the first
  open saved (`explain.report.overview`), nothing is measured or explained;
- ``first_run_cpu``: CPU seconds of a fresh process's first script run of ``app.py`` (AppTest, the server's
  Streamlit and plotly imported before) until the first figure's delta is enqueued: the server's share of
  ``first_figure``, which moves little with the machine's load where the browser rows move a lot;
- ``rerun``: the Overview's script run again for a view already computed (AppTest in this
  process, median of 5): what every click on a computed view costs (target 0.3 s);
- ``floor_first_figure`` / ``floor_again_first_figure``: the same browser opening a blank Streamlit app
  (`FLOOR_APP`: one small heat map and a caption, numpy and plotly imported) on a fresh server, then in a
  second tab: the floor under ``first_figure`` and ``again_first_figure`` on this machine (Streamlit's page,
  its websocket and its Plotly chart code, which the browser loads and runs at the first chart).

Each tree's modules are byte-compiled first (``compileall``), as a deployed app's are after its first start: a
shell with ``PYTHONDONTWRITEBYTECODE`` set (this machine's) would otherwise compile every module of the app from
source in every fresh server (~0.1-0.2 s of the first script run), which no real second start pays.

One JSON object per line on stdout: ``{"row", "seconds", "torch_imports", "target", "within", "load"}``
(``load``: the 1-minute load average when the row was measured; figures move with it, ratios hold).

``--baseline DIR`` measures another tree of the app too (e.g. the commit before a change:
``git archive HEAD~1 | tar -x -C DIR``), in the same rounds, the two trees taking turns; each row then
says which (``"app": "baseline" | "this"``) and a last line gives, per row, the median of this tree's
seconds over the baseline's (``{"ratios": {...}}``).

    python benchmarks/app_latency.py [--rounds 2] [--baseline DIR] [--json rows.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("GLASSBOX_CHROMIUM", "/usr/bin/chromium")
FLOOR_APP = """
import numpy as np
import plotly.graph_objects as go
import streamlit as st

st.set_page_config(page_title="floor", layout="wide")
st.title("Floor")
st.plotly_chart(go.Figure(go.Heatmap(z=np.random.default_rng(0).random((64, 64)).round(3))), key="map")
st.caption("completeness error 0")
"""
TARGETS = {"first_figure": 3.0, "first_map": 3.0, "again_first_figure": 3.0, "restart_first_figure": 3.0,
           "restart_first_map": 3.0, "rerun": 0.3}



def byte_compile(root: Path) -> None:
    """Write ``root``'s ``__pycache__`` (its own modules, not a virtual environment inside it)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-x", r"/\.venv/", str(root)], check=True,
                   stdout=subprocess.DEVNULL)


def torch_import() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True, cwd=ROOT)
    return time.perf_counter() - start


def start_server(home: str, root: Path = ROOT) -> tuple[subprocess.Popen, str, float]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(Path(home) / "streamlit.log", "w")
    env = {**os.environ, "GLASSBOX_HOME": home}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(root / "app.py"), "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url, time.perf_counter() - start
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"streamlit exited; see {home}/streamlit.log") from None
            time.sleep(0.1)


def open_app(browser, url: str) -> tuple[float, float, float]:
    """Seconds from opening ``url`` to the page's title, to the first figure, and to the Output column's map
    and caption."""
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    try:
        start = time.perf_counter()
        page.goto(url)
        page.wait_for_selector("h1", timeout=300_000)  # the page's title: the frame is up, the script runs
        title = time.perf_counter() - start
        page.wait_for_selector('[data-testid="stPlotlyChart"]', timeout=300_000)
        first = time.perf_counter() - start
        page.get_by_text("completeness error").first.wait_for(timeout=300_000)
        return title, first, time.perf_counter() - start
    finally:
        page.close()


RERUN = """
import os, statistics, sys, time
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(os.path.join(os.getcwd(), "pages", "views", "overview.py"), default_timeout=300)
at.run()
assert not at.exception, at.exception
times = []
for _ in range(int(sys.argv[1])):
    start = time.perf_counter()
    at.run()
    times.append(time.perf_counter() - start)
print(statistics.median(times))
"""


FIRST_RUN_CPU = """
import os, sys, time
import plotly.graph_objects, streamlit.web.bootstrap  # what the server holds before its first script run
from streamlit.runtime.forward_msg_queue import ForwardMsgQueue
from streamlit.testing.v1 import AppTest
found = []


def first_figure(msg):
    if not found and msg.WhichOneof("type") == "delta" and msg.delta.WhichOneof("type") == "new_element" \\
            and msg.delta.new_element.WhichOneof("type") == "plotly_chart":
        found.append(time.process_time())


ForwardMsgQueue.on_before_enqueue_msg(first_figure)
at = AppTest.from_file(os.path.join(os.getcwd(), "app.py"), default_timeout=300)
start = time.process_time()
at.run()
assert not at.exception and found, at.exception
print(found[0] - start)
"""


def first_run_cpu(home: str, root: Path = ROOT) -> float:
    """CPU seconds of ``root``'s first script run (a fresh process, a new workspace) until its first figure."""
    env = {**os.environ, "GLASSBOX_HOME": home, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", FIRST_RUN_CPU], cwd=root, env=env, capture_output=True, text=True,
                         check=True, timeout=600)
    return float(out.stdout.strip().splitlines()[-1])


def rerun_seconds(home: str, root: Path = ROOT, n: int = 5) -> float:
    """The Overview's script run again on a computed view (AppTest in a fresh process of ``root``'s tree):
    median seconds."""
    env = {**os.environ, "GLASSBOX_HOME": home, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", RERUN, str(n)], cwd=root, env=env, capture_output=True, text=True,
                         check=True, timeout=600)
    return float(out.stdout.strip().splitlines()[-1])


def row(name: str, seconds: float, torch_s: float) -> dict:
    target = TARGETS.get(name)
    return {"row": name, "seconds": round(seconds, 3), "torch_imports": round(seconds / torch_s, 2),
            "target": target, "within": None if target is None else seconds <= target,
            "load": round(os.getloadavg()[0], 2)}


def measure(browser, root: Path, torch_s: float) -> list[dict]:
    """One round of every row but the yardstick on the app in ``root``."""
    found = []
    home = tempfile.mkdtemp(prefix="glassbox-app-latency-")
    proc, url, ready = start_server(home, root)
    try:
        found.append(row("server_ready", ready, torch_s))
        title, first, first_map = open_app(browser, url)
        found += [row("first_title", title, torch_s), row("first_figure", first, torch_s),
                  row("first_map", first_map, torch_s)]
        _, again, _ = open_app(browser, url)
        found.append(row("again_first_figure", again, torch_s))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    proc, url, _ = start_server(home, root)  # the same workspace: its first view is saved
    try:
        _, first, first_map = open_app(browser, url)
        found += [row("restart_first_figure", first, torch_s), row("restart_first_map", first_map, torch_s)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    found.append(row("first_run_cpu", first_run_cpu(tempfile.mkdtemp(prefix="glassbox-app-latency-"), root), torch_s))
    found.append(row("rerun", rerun_seconds(tempfile.mkdtemp(prefix="glassbox-app-latency-"), root), torch_s))
    return found


def measure_floor(browser, torch_s: float) -> list[dict]:
    """The floor rows: `FLOOR_APP` on a fresh server, a first tab and a second."""
    root = Path(tempfile.mkdtemp(prefix="glassbox-app-floor-"))
    (root / "app.py").write_text(FLOOR_APP)
    proc, url, _ = start_server(str(root), root)
    try:
        _, first, _ = open_app(browser, url)
        _, again, _ = open_app(browser, url)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return [row("floor_first_figure", first, torch_s), row("floor_again_first_figure", again, torch_s)]


def ratios(rows: list[dict]) -> dict[str, float]:
    """Per row, the median over rounds of this tree's seconds / the baseline's (rounds pair them in order)."""
    out = {}
    for name in dict.fromkeys(r["row"] for r in rows if "app" in r):
        this = [r["seconds"] for r in rows if r["row"] == name and r.get("app") == "this"]
        base = [r["seconds"] for r in rows if r["row"] == name and r.get("app") == "baseline"]
        pairs = [t / b for t, b in zip(this, base) if b > 0]
        if pairs:
            out[name] = round(statistics.median(pairs), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", help="another tree of the app to measure in the same rounds")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    trees = [("this", ROOT)] + ([("baseline", Path(args.baseline).resolve())] if args.baseline else [])
    for _, root in trees:
        byte_compile(root)
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            for i in range(args.rounds):
                torch_s = torch_import()
                found = [row("torch_import", torch_s, torch_s), *measure_floor(browser, torch_s)]
                for app, root in trees[i % 2:] + trees[:i % 2]:  # the trees take turns going first
                    found += [{**r, "app": app} if args.baseline else r for r in measure(browser, root, torch_s)]
                for r in found:
                    print(json.dumps(r), flush=True)
                rows += found
        finally:
            browser.close()
    if args.baseline:
        print(json.dumps({"ratios": ratios(rows)}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
