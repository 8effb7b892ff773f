"""A ``.pt2`` exported with a fixed batch of 1 vs the same model exported with a dynamic batch.

Gradient methods run a fixed-batch-1 program on whole chunks through
``torch.func.vmap`` over its one-row call (`explain.output.model_function.ModelFunction`);
before, they ran it row by row. This prints, per bundled sample, the median
seconds of integrated gradients (4 inputs, 64 steps) on ``model.pt2``
(dynamic batch), on ``model_static.pt2`` (batch 1, row-mapped) and on
``model_static.pt2`` row by row, runs interleaved, and the ratios static /
dynamic. The goal is a ratio within 2.

    python benchmarks/fixed_batch_pt2.py [--repeats 3] [--steps 64] [--samples shapes sentiment]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--samples", nargs="+", default=["cancer", "shapes", "sentiment"])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import torch

    torch._C._set_warnAlways(False)
    from explain.output.methods import get_method
    from explain.output.model_function import ModelFunction
    from sample_models import load_sample, sample_inputs

    ig = get_method("integrated_gradients")
    print(f"{'sample':<10} {'dynamic s':>10} {'static s':>10} {'rows s':>10} {'static/dyn':>11} {'rows/dyn':>9}")
    for name in args.samples:
        x = sample_inputs(name)["inputs"][:4]
        dynamic, static = load_sample(name, "export"), load_sample(name, "export_static")

        def run(model, row_by_row: bool = False, x=x) -> float:
            original = ModelFunction.__init__

            def rows_only(self, *a, **kw):
                original(self, *a, **kw)
                self.row_mapped = False

            if row_by_row:
                ModelFunction.__init__ = rows_only
            try:
                start = time.perf_counter()
                ig.explain(model, x, use_cache=False, steps=args.steps)
                return time.perf_counter() - start
            finally:
                ModelFunction.__init__ = original

        run(dynamic), run(static)  # warm up
        times: dict[str, list[float]] = {"dynamic": [], "static": [], "rows": []}
        for _ in range(args.repeats):
            times["dynamic"].append(run(dynamic))
            times["static"].append(run(static))
            times["rows"].append(run(static, row_by_row=True))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{name:<10} {med['dynamic']:>10.2f} {med['static']:>10.2f} {med['rows']:>10.2f} "
              f"{med['static'] / med['dynamic']:>11.2f} {med['rows'] / med['dynamic']:>9.2f}")


if __name__ == "__main__":
    main()
