"""What the model-process boundary costs: a user's graph explained in the server vs in its process.

A TorchScript or ``.pt2`` upload now lives and runs only in a sandboxed model
process (`explain.loading.model_process`). This script takes the quick cases of
``benchmarks/attribution.py`` (ResNet-like IG, VGG DeepLift-SHAP), saves each model
as TorchScript, and times, back to back in one run:

- ceiling: the model's own batched forward + input gradient over the same rows, here;
- in-server: the method on the graph loaded in this process (how it ran before);
- model process: the method on ``load_model(bytes)`` (the graph in its child);

and prints each one's ratio to the ceiling and the share lost at the boundary.
Also: the cold start (zygote, imports, warm-up) and the warm load of a second model.

    python benchmarks/model_process.py [--repeats 5] [--json rows.json]
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from explain.loading.loader import load_model  # noqa: E402
from explain.model import LoadedModel  # noqa: E402
from explain.output.methods import get_method  # noqa: E402


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_attribution", ROOT / "benchmarks" / "attribution.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_attribution"] = module
    spec.loader.exec_module(module)
    return module


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    bench = _bench_module()
    cases = [c for c in bench.build_cases(True, torch.device("cpu")) if c.method != "layer_integrated_gradients"]
    rows = []
    for case in cases:
        buf = io.BytesIO()
        torch.jit.save(torch.jit.script(case.model.module.eval()), buf)
        data = buf.getvalue()
        t0 = time.perf_counter()
        remote = load_model(data, case.model.spec)
        load_s = time.perf_counter() - t0
        local = LoadedModel(module=torch.jit.load(io.BytesIO(data)).eval(), format="torchscript",
                            sha256=remote.sha256, spec=remote.spec, max_batch_rows=remote.max_batch_rows)
        params = dict(case.params)
        if case.background is not None:
            params["background"] = case.background
        method = get_method(case.method)

        def run(model, _method=method, _case=case, _params=params):
            return _method.explain(model, _case.x, use_cache=False, **_params)

        run(local)  # warm both paths
        run(remote)
        rows_total = case.x.shape[0] * case.per_input
        x_all = torch.from_numpy(np.repeat(case.x, case.per_input, axis=0))
        module = local.module

        def ceiling(_x=x_all, _module=module):
            for chunk in torch.split(_x, 64):
                chunk = chunk.clone().requires_grad_(True)
                torch.autograd.grad(_module(chunk).sum(), chunk)

        # interleaved, so that load on the machine hits all three alike
        t_ceiling, t_local, t_remote = [], [], []
        for _ in range(args.repeats):
            t_ceiling.append(_median_seconds(ceiling, 1))
            t_local.append(_median_seconds(functools.partial(run, local), 1))
            t_remote.append(_median_seconds(functools.partial(run, remote), 1))
        c, loc, rem = (statistics.median(t) for t in (t_ceiling, t_local, t_remote))
        inner = statistics.median(run(remote).seconds for _ in range(3))  # measured inside the child
        same = np.allclose(run(local).values, run(remote).values, atol=1e-5)
        row = {"case": case.name, "rows": rows_total, "load_s": round(load_s, 2),
               "ceiling_s": round(c, 4), "in_server_s": round(loc, 4), "model_process_s": round(rem, 4), "inside_child_s": round(inner, 4),
               "ratio_in_server": round(c / loc, 3), "ratio_model_process": round(c / rem, 3),
               "lost_at_boundary": round(1 - loc / rem, 3), "same_values": bool(same)}
        rows.append(row)
        print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
