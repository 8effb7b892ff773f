"""A fresh server's first open as one timeline (issue 21, "No waiting"): what the server sent and what the browser drew.

`app_latency.py` says how long the first figure takes; this says where the time goes. One fresh server on a new
workspace, one headless Chromium tab; each line is seconds since the tab opened and one event, in order:

- ``send``: a ForwardMsg the server wrote to the browser's websocket (its type; a delta's element type and path);
- ``run_start`` / ``run_end``: a script run of the server (``--profile FILE``: the first ``--runs`` runs profiled
  with cProfile, written to ``FILE.1``, ``FILE.2``, ...; read them with ``python -m pstats``);
- ``ws_recv``: a websocket frame the browser received (its bytes);
- ``req_done``: a file the browser fetched (Streamlit's chunks: ``PlotlyChart.*.js`` is Plotly's), with its timing;
- ``drawn``: an element (``data-testid``) added to the page, with the start of its text.

    python benchmarks/app_timeline.py [--app DIR] [--seconds 8] [--profile FILE] [--runs 1] > timeline.txt
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("GLASSBOX_CHROMIUM", "/usr/bin/chromium")
# `streamlit run` with its websocket writes and script runs logged (wall time) to $TL_LOG
LAUNCH = r"""
import json, os, sys, time
log = open(os.environ["TL_LOG"], "a")
def rec(**kw):
    kw["t"] = time.time()
    log.write(json.dumps(kw) + "\n")
    log.flush()
from streamlit.web.server.starlette import starlette_websocket as sw
write = sw.StarletteSessionClient.write_forward_msg
def logged(self, msg):
    kind, detail = msg.WhichOneof("type"), ""
    if kind == "delta":
        detail = msg.delta.WhichOneof("type")
        detail = msg.delta.new_element.WhichOneof("type") if detail == "new_element" else detail
    rec(ev="send", kind=kind, detail=detail, path=list(msg.metadata.delta_path))
    return write(self, msg)
sw.StarletteSessionClient.write_forward_msg = logged
from streamlit.runtime.scriptrunner import script_runner as sr
run, runs = sr.ScriptRunner._run_script, []
def timed(self, *a, **k):
    runs.append(1)
    n, profile = len(runs), os.environ.get("TL_PROFILE")
    rec(ev="run_start", n=n)
    try:
        if profile and n <= int(os.environ["TL_RUNS"]):
            import cProfile
            p = cProfile.Profile()
            try:
                return p.runcall(run, self, *a, **k)
            finally:
                p.dump_stats(f"{profile}.{n}")
        return run(self, *a, **k)
    finally:
        rec(ev="run_end", n=n)
sr.ScriptRunner._run_script = timed
from streamlit.web.cli import main
sys.argv = ["streamlit", "run", *sys.argv[1:]]
main()
"""
# every element added to the page, with its time on the page's clock (epoch milliseconds)
OBSERVE = """
window.__drawn = [];
new MutationObserver(ms => {
  const t = performance.timeOrigin + performance.now();
  for (const m of ms) for (const n of m.addedNodes) if (n.querySelectorAll)
    for (const e of [n, ...n.querySelectorAll('[data-testid]')]) {
      const id = e.getAttribute && e.getAttribute('data-testid');
      if (id && /^st[A-Z]/.test(id) && !/Container|Block|Layout|Wrapper|Skeleton|IconMaterial|HeaderAction/.test(id))
        window.__drawn.push([t, id, (e.innerText || '').slice(0, 30)]);
    }
}).observe(document, {childList: true, subtree: true});
"""


def timeline(app: Path, seconds: float, profile: str | None, runs: int) -> list[tuple[float, dict]]:
    from playwright.sync_api import sync_playwright

    home, server_log = tempfile.mkdtemp(prefix="glassbox-timeline-"), Path(tempfile.mktemp(suffix=".jsonl"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GLASSBOX_HOME": home, "TL_LOG": str(server_log), "TL_RUNS": str(runs),
           "PYTHONPATH": str(app), **({"TL_PROFILE": profile} if profile else {})}
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(app / "app.py"), "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=app, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url, events = f"http://127.0.0.1:{port}", []
    try:
        while True:
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit("streamlit exited") from None
                time.sleep(0.05)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                        "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.add_init_script(OBSERVE)
            page.on("websocket", lambda ws: ws.on("framereceived", lambda f: events.append(
                (time.time(), {"ev": "ws_recv", "bytes": len(f)}))))
            page.on("requestfinished", lambda r: events.append(
                (time.time(), {"ev": "req_done", "url": r.url.rsplit("/", 1)[-1], "timing_ms": {
                    k: round(v, 1) for k, v in r.timing.items() if k in ("requestStart", "responseStart", "responseEnd")}})))
            opened = time.time()
            page.goto(url)
            page.wait_for_timeout(seconds * 1000)
            events += [(t / 1000, {"ev": "drawn", "id": tid, "text": text}) for t, tid, text in page.evaluate("window.__drawn")]
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    for line in server_log.read_text().splitlines():
        e = json.loads(line)
        events.append((e.pop("t"), e))
    return sorted(((t - opened, e) for t, e in events), key=lambda te: te[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", type=Path, default=ROOT, help="the app's tree (default: this one)")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long to watch after opening")
    parser.add_argument("--profile", help="cProfile the first --runs script runs into FILE.1, FILE.2, ...")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    for t, e in timeline(args.app.resolve(), args.seconds, args.profile, args.runs):
        print(f"{t:7.3f} {json.dumps(e)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
