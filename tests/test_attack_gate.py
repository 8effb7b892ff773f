"""Red-team checks of the API's gate (`explain.service.asgi.Gate`) against bodies sent slowly (slowloris):
a declared ``Content-Length`` is reserved whole before the body is read, and nothing bounded how long the
body could take, so one viewer token's four connections, each declaring the most and sending nothing,
held the whole budget for as long as they stayed open: every other caller got 503. A token now holds
at most one body's cap, and a body not whole within ``body_seconds`` gets 408."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import anyio

from explain.service.asgi import Gate
from explain.service.lookups import Identity


def _run(fn, *args):
    """``anyio.run`` in a thread of its own: in the full suite a Playwright module before this one leaves an
    event loop running in the main thread, where ``anyio.run`` refuses to start."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, fn, *args).result()


async def _app(scope, receive, send):  # the routes: 200 with the body's length
    body = (await receive())["body"]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps({"bytes": len(body)}).encode()})


def _gate(**more) -> Gate:
    return Gate(_app, identify=lambda token: Identity(token, "viewer", None), limit=100, budget=400, **more)


async def _request(gate: Gate, token: str, declared: int, chunks: list[bytes], stall: bool = False) -> int:
    """One POST through the gate: its status. ``stall``: after ``chunks`` the client sends nothing more."""
    scope = {"type": "http", "method": "POST", "path": "/v1/models/m:predict",
             "headers": [(b"authorization", f"Bearer {token}".encode()), (b"content-length", str(declared).encode())]}
    sent, out = iter(chunks), {}

    async def receive():
        chunk = next(sent, None)
        if chunk is None:
            if stall:
                await anyio.sleep_forever()
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunk, "more_body": stall or chunk is not chunks[-1]}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]

    await gate(scope, receive, send)
    return out["status"]


def test_one_tokens_stalled_bodies_leave_the_budget_to_others():
    gate, statuses = _gate(body_seconds=0.5), {}

    async def main():
        async def slow(i):
            statuses[f"slow{i}"] = await _request(gate, "mallory", 100, [b"x"], stall=True)

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(slow, i)
            await anyio.sleep(0.1)  # the four are waiting for bodies that never come
            statuses["held"] = gate.budget.used
            statuses["other"] = await _request(gate, "alice", 50, [b"y" * 50])

    _run(main)
    assert statuses["held"] == 100  # one reservation of mallory's; the other three refused at once
    assert sorted(statuses[f"slow{i}"] for i in range(4)) == [408, 503, 503, 503]
    assert statuses["other"] == 200
    assert gate.budget.used == 0 and gate.budget.held == {}


def test_a_body_sent_whole_in_time_passes_and_over_the_cap_is_413():
    gate = _gate()
    assert _run(_request, gate, "alice", 60, [b"a" * 30, b"b" * 30]) == 200
    assert _run(_request, gate, "alice", 0, [b"a" * 60, b"b" * 60]) == 413  # streamed past the cap
    assert gate.budget.used == 0 and gate.budget.held == {}
