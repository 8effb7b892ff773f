"""Dataset-wide throughput: the local engine vs the Ray engine (attributions/s), and the raw ceiling.

For each case a dataset is built from a sample's held-out rows (repeated), explained
with `explain.dataset.run.explain_dataset` on the local engine and on a Ray engine
with one actor per CPU of a local Ray cluster (``ray.init(num_cpus=CPUS)``). Ray is timed
twice: the first run includes starting the actors (each imports torch and loads the
model with explain's loader), the second reuses them (the steady state of a worker). The
results are checked equal to the local run. ``ceiling``: the same method called once
on the whole array in this process (no shards, no summaries); ``local 1t``: the local engine
with torch on one thread, as each 1-CPU actor runs.

    python benchmarks/dataset.py [--rows 512] [--cpus 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sample_models  # noqa: E402
from explain.dataset.reading import read_dataset  # noqa: E402
from explain.dataset.run import DatasetRun, explain_dataset, make_engine  # noqa: E402
from explain.output.methods import get_method  # noqa: E402

CASES = [  # (sample, method, params, shard rows)
    ("cancer", "integrated_gradients", {"steps": 32, "tolerance": 0.0}, 64),
    ("shapes", "integrated_gradients", {"steps": 16, "tolerance": 0.0}, 32),
    ("sentiment", "saliency", {}, 64),
]


def _run(model, dataset, method, params, shard_rows, engine) -> tuple[float, dict]:
    start = time.perf_counter()
    run = DatasetRun(model, dataset, method, shard_rows)
    for shard in explain_dataset(model, dataset, method, params, shard_rows=shard_rows, engine=engine):
        run.add(shard)
    return time.perf_counter() - start, run.arrays()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import ray
    import torch

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    rows = []
    print(f"{args.rows} rows per dataset · torch threads here {torch.get_num_threads()} · Ray actors {args.cpus}")
    print(f"{'case':44} {'ceiling':>8} {'local':>8} {'local 1t':>8} {'ray 1st':>8} {'ray':>8} {'ray/local':>9}  equal")
    for sample, method, params, shard_rows in CASES:
        model = sample_models.load_sample(sample)
        x = sample_models.sample_inputs(sample)["inputs"]
        x = np.concatenate([x] * (args.rows // len(x) + 1))[: args.rows]
        dataset = read_dataset(x, model.spec)
        data = sample_models.sample_file(sample).read_bytes()
        start = time.perf_counter()
        get_method(method).explain(model, x, use_cache=False, **params)
        ceiling = time.perf_counter() - start
        local_s, local = _run(model, dataset, method, params, shard_rows, None)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each Ray actor runs (Ray sets OMP_NUM_THREADS=1 for a 1-CPU actor)
        local1_s, _ = _run(model, dataset, method, params, shard_rows, None)
        torch.set_num_threads(threads)
        first_s, _ = _run(model, dataset, method, params, shard_rows, make_engine("ray", model, data))
        ray_s, remote = _run(model, dataset, method, params, shard_rows, make_engine("ray", model, data))
        equal = all(np.array_equal(local[k], remote[k], equal_nan=local[k].dtype.kind == "f") for k in local)
        row = {"case": f"{sample} {method} ({shard_rows}-row shards)", "rows": args.rows,
               "ceiling_per_s": args.rows / ceiling, "local_per_s": args.rows / local_s, "local_1_thread_per_s": args.rows / local1_s,
               "ray_first_per_s": args.rows / first_s, "ray_per_s": args.rows / ray_s, "equal": equal}
        rows.append(row)
        print(f"{row['case']:44} {row['ceiling_per_s']:8.1f} {row['local_per_s']:8.1f} {row['local_1_thread_per_s']:8.1f} "
              f"{row['ray_first_per_s']:8.1f} {row['ray_per_s']:8.1f} {row['ray_per_s'] / row['local_per_s']:9.2f}  {equal}")
    print("(attributions/s: explained rows per second; 'local 1t': torch on one thread, as in each actor; "
          "'ray 1st' includes starting the actors, 'ray' reuses them)")
    ray.shutdown()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
