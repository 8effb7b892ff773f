"""Dataset-wide explanations (explain.dataset): reading, shards, streamed summaries, `python -m explain batch`."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sample_models
from explain.attribution import Attribution
from explain.cli import main
from explain.dataset.reading import read_dataset
from explain.dataset.run import DatasetRun, explain_dataset
from explain.dataset.summary import SummaryAccumulator, shard_stats
from explain.errors import Cancelled, IncompatibleInput
from explain.inputs.reading import read_inputs
from explain.output.methods import get_method
from explain.spec import InputSpec

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cancer():
    return sample_models.load_sample("cancer")


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _image_files(spec: InputSpec) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    files = {}
    for cls in spec.class_names[:2]:
        for i in range(3):
            files[f"{cls}/{i}.png"] = _png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    return files


# -- reading --------------------------------------------------------------------------------------
def test_image_folder_and_zip_read_like_single_images_with_folder_labels(tmp_path):
    spec = sample_models.load_sample("shapes").spec
    files = _image_files(spec)
    for name, data in files.items():
        (tmp_path / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "imgs" / name).write_bytes(data)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("__MACOSX/circle/._0.png", b"resource fork")
    folder = read_dataset(tmp_path / "imgs", spec)
    archive = read_dataset(("imgs.zip", zipped.getvalue()), spec)
    expected = np.concatenate([read_inputs(data, spec, filename=name).array for name, data in sorted(files.items())])
    assert len(folder) == len(archive) == 6
    assert folder.names == sorted(files) == archive.names
    assert folder.labels.tolist() == [0, 0, 0, 1, 1, 1] == archive.labels.tolist()  # circle/, square/
    np.testing.assert_array_equal(folder.rows(0, 6), expected)
    np.testing.assert_array_equal(np.concatenate([archive.rows(s, e) for s, e in archive.shards(4)]), expected)
    assert archive.shards(4) == [(0, 4), (4, 6)]


def test_npz_csv_and_text_read_like_read_inputs(cancer, tmp_path):
    path = sample_models.sample_dir("cancer") / "samples.npz"
    data = read_dataset(path, cancer.spec)
    batch = read_inputs(path, cancer.spec)
    np.testing.assert_array_equal(data.rows(0, len(data)), batch.array)
    assert data.labels.tolist() == batch.labels.tolist()
    sentiment = sample_models.load_sample("sentiment").spec
    (tmp_path / "t.txt").write_text("a great film\n\nawful\n")
    assert len(read_dataset(tmp_path / "t.txt", sentiment)) == 2


def test_images_for_a_tabular_model_are_refused_in_one_line(cancer, tmp_path):
    spec = sample_models.load_sample("shapes").spec
    (tmp_path / "a.png").write_bytes(_image_files(spec)["circle/0.png"])
    with pytest.raises(IncompatibleInput, match="holds images, but this model takes tabular"):
        read_dataset(tmp_path, cancer.spec)
    (tmp_path / "a.png").unlink()
    with pytest.raises(IncompatibleInput, match="holds no images"):
        read_dataset(tmp_path, spec)


# -- summaries: known answers ------------------------------------------------------------------------
def _attr(values, target, inputs=None) -> Attribution:
    values = np.asarray(values, np.float64)
    return Attribution(values=values, inputs=values if inputs is None else np.asarray(inputs), target=target, method="m")


def test_tabular_summary_is_mean_abs_and_class_means():
    spec = InputSpec(modality="tabular", input_shape=[2], class_names=["a", "b", "c"])
    acc = SummaryAccumulator(spec, 3, total_rows=3, total_shards=2)
    acc.add(0, shard_stats(_attr([[1.0, -2.0], [3.0, 0.0]], [0, 1]), spec, 3))
    partial = acc.summary()
    assert (partial.rows, partial.shards_done, partial.complete) == (2, 1, False)
    np.testing.assert_allclose(partial.mean_abs, [2.0, 1.0])
    acc.add(1, shard_stats(_attr([[-5.0, 4.0]], [0]), spec, 3))
    final = acc.summary()
    assert final.complete and final.rows == 3
    np.testing.assert_allclose(final.mean_abs, [3.0, 2.0])
    assert final.class_counts.tolist() == [2, 1, 0]
    np.testing.assert_allclose(final.class_means[:2], [[-2.0, 1.0], [3.0, 0.0]])
    assert np.isnan(final.class_means[2]).all()  # no row explained for class c


def test_image_class_mean_maps_sum_channels():
    spec = InputSpec(modality="image", input_shape=[2, 1, 2], class_names=["x", "y"])
    values = np.zeros((3, 2, 1, 2))
    values[0, 0, 0] = [1, 2]
    values[0, 1, 0] = [1, 0]  # row 0 map: [2, 2]
    values[1, :, 0] = [[4, 0], [0, 0]]  # row 1 map: [4, 0]
    values[2, 0, 0] = [0, 6]  # row 2 map: [0, 6]
    acc = SummaryAccumulator(spec, 2, 3, 1)
    acc.add(0, shard_stats(_attr(values, [0, 0, 1]), spec, 2))
    summary = acc.summary()
    np.testing.assert_allclose(summary.class_means, [[[3.0, 1.0]], [[0.0, 6.0]]])  # [K, H, W]
    np.testing.assert_allclose(summary.mean_abs, [[2.0, 8 / 3]])


def test_text_top_tokens_per_class_leave_padding_out():
    spec = InputSpec(modality="text", input_shape=[3], dtype="int64", class_names=["neg", "pos"],
                     vocabulary=["<pad>", "<unk>", "good", "bad", "film"])
    ids = [[2, 4, 0], [3, 4, 0], [2, 2, 4]]
    values = [[1.0, 0.1, 9.0], [2.0, -0.5, 9.0], [0.5, 0.25, 0.2]]
    acc = SummaryAccumulator(spec, 2, 3, 1)
    acc.add(0, shard_stats(_attr(values, [1, 0, 1], inputs=ids), spec, 2))
    top = acc.summary().top_tokens
    assert [(t.token, t.total, t.count) for t in top[1]] == [("good", 1.75, 3), ("film", 0.30000000000000004, 2)]
    assert [(t.token, t.total, t.count) for t in top[0]] == [("bad", 2.0, 1), ("film", -0.5, 1)]


def test_shards_finishing_out_of_order_give_the_same_summary_bit_for_bit():
    spec = InputSpec(modality="tabular", input_shape=[4], class_names=["a", "b"])
    rng = np.random.default_rng(1)
    stats = [shard_stats(_attr(rng.normal(size=(5, 4)) * 10 ** rng.uniform(-8, 8), rng.integers(0, 2, 5)), spec, 2)
             for _ in range(6)]
    in_order, shuffled = SummaryAccumulator(spec, 2, 30, 6), SummaryAccumulator(spec, 2, 30, 6)
    for i, s in enumerate(stats):
        in_order.add(i, s)
    for i in (3, 1, 5, 0, 4, 2):
        shuffled.add(i, stats[i])
    a, b = in_order.summary(), shuffled.summary()
    assert a.mean_abs.tobytes() == b.mean_abs.tobytes() and a.class_means.tobytes() == b.class_means.tobytes()


# -- running ------------------------------------------------------------------------------------------
def test_local_run_streams_shards_and_equals_one_whole_batch(cancer):
    x = sample_models.sample_inputs("cancer")["inputs"][:20]
    data = read_dataset(x, cancer.spec)
    calls, summaries = [], []
    run = DatasetRun(cancer, data, "integrated_gradients", shard_rows=8)
    for shard in explain_dataset(cancer, data, "integrated_gradients", {"steps": 16}, shard_rows=8,
                                 progress=lambda d, t: calls.append((d, t))):
        run.add(shard)
        summaries.append(run.summary().rows)
    # after each shard, and again unchanged between and inside shards (cancel points)
    assert sorted(set(calls)) == [(0, 3), (1, 3), (2, 3), (3, 3)] and calls == sorted(calls) and summaries == [8, 16, 20]
    whole = get_method("integrated_gradients").explain(cancer, x, steps=16, use_cache=False)
    arrays = run.arrays()
    np.testing.assert_allclose(arrays["values"], whole.values, rtol=0, atol=1e-6)
    assert arrays["targets"].tolist() == whole.target.tolist() == arrays["predictions"].tolist()
    np.testing.assert_allclose(arrays["summary_mean_abs"], np.abs(whole.values).mean(axis=0), atol=1e-6)


def test_mean_baseline_is_the_whole_datasets_mean_not_each_shards(cancer):
    x = sample_models.sample_inputs("cancer")["inputs"][:12]
    data = read_dataset(x, cancer.spec)
    run = DatasetRun(cancer, data, "integrated_gradients", shard_rows=4)
    for shard in explain_dataset(cancer, data, "integrated_gradients", {"steps": 8, "baseline": "mean", "tolerance": 0},
                                 shard_rows=4):
        run.add(shard)
    whole = get_method("integrated_gradients").explain(cancer, x, steps=8, baseline="mean", tolerance=0, use_cache=False)
    np.testing.assert_allclose(run.arrays()["base_value"], whole.base_value, atol=1e-5)


def test_cancel_stops_after_the_current_shard(cancer):
    data = read_dataset(sample_models.sample_inputs("cancer")["inputs"], cancer.spec)
    done = []

    def progress(_done, _total):  # the one cancel: the progress callback raises
        if done:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        for shard in explain_dataset(cancer, data, "saliency", shard_rows=8, progress=progress):
            done.append(shard.index)
    assert done == [0]


# -- the CLI -------------------------------------------------------------------------------------------
def _cli(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else None), out.err


def test_cli_batch_equals_attribute_on_the_same_inputs(capsys, tmp_path):
    inputs = str(sample_models.sample_dir("cancer") / "samples.npz")
    common = ["cancer", "--inputs", inputs, "--method", "integrated_gradients", "--steps", "16", "--target", "1"]
    code, batch, err = _cli(capsys, ["batch", *common, "--shard-rows", "10", "--out", str(tmp_path / "run.npz")])
    assert code == 0, err
    code, attribute, err = _cli(capsys, ["attribute", *common, "--out", str(tmp_path / "att.npz")])
    assert code == 0, err
    run, att = np.load(tmp_path / "run.npz"), np.load(tmp_path / "att.npz")
    np.testing.assert_allclose(run["values"], att["values"], rtol=0, atol=1e-6)
    assert run["targets"].tolist() == att["targets"].tolist()
    for key in ("output", "base_value", "completeness_error"):  # float32 logits: other batch sizes, last bits
        np.testing.assert_allclose(run[key], att[key], rtol=1e-6, atol=1e-6)
    assert batch["rows"] == 32 and batch["shards"] == 4 and batch["engine"] == "local"
    assert run["labels"].tolist() == sample_models.sample_inputs("cancer")["labels"].tolist()
    assert run["predictions"].shape == (32,) and run["probabilities"].shape == (32, 2)
    assert batch["summary"]["class_counts"] == {"malignant": 0, "benign": 32}
    top_feature, top_value = next(iter(batch["summary"]["mean_abs"].items()))
    assert top_value == pytest.approx(np.abs(att["values"]).mean(axis=0).max(), abs=1e-6)
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically: no temporary left


def test_cli_batch_text_top_tokens_and_label_targets(capsys, tmp_path):
    inputs = str(sample_models.sample_dir("sentiment") / "samples.npz")
    code, payload, err = _cli(capsys, ["batch", "sentiment", "--inputs", inputs, "--method", "saliency",
                                       "--target", "label", "--out", str(tmp_path / "run.npz")])
    assert code == 0, err
    run = np.load(tmp_path / "run.npz")
    assert run["targets"].tolist() == run["labels"].tolist()
    assert run["summary_top_tokens"].dtype.kind == "U" and run["summary_top_tokens"].shape[0] == 2
    assert set(payload["summary"]["top_tokens"]) == {"negative", "positive"}


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["--inputs", "missing.npz"], 2, "No such inputs"),
    (["--shard-rows", "0"], 2, "--shard-rows"),
    (["--target", "cat"], 2, "--target wants"),
    (["--engine", "spark"], 2, "invalid choice"),
    (["--param", "nope=1"], 2, "Unknown parameter"),
])
def test_cli_batch_usage_errors_are_one_line(capsys, tmp_path, argv, code, message):
    inputs = str(sample_models.sample_dir("cancer") / "samples.npz")
    base = ["batch", "cancer", "--inputs", inputs, "--method", "saliency", "--out", str(tmp_path / "r.npz")]
    got, payload, err = _cli(capsys, base + argv)
    assert got == code and payload is None
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.npz").exists()


def test_ray_is_not_imported_by_explain_the_cli_or_the_local_engine():
    code = ("import sys, explain, explain.cli, explain.cli.batch, explain.dataset.run; "
            "explain.load_model; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_batch_is_a_batch_job_saved_as_a_dataset_run_with_partial_summaries(capsys, tmp_path, monkeypatch):
    """``batch`` goes through the queue: a batch-priority "dataset" job, its summary published after
    each shard but the last, its result a saved run holding exactly RUN.npz."""
    from explain.cli.workspace_arg import cli_actor
    from explain.dataset.job import saved_dataset
    from explain.workspace import open_workspace

    home = tmp_path / "home"
    monkeypatch.setenv("GLASSBOX_HOME", str(home))
    inputs = str(sample_models.sample_dir("cancer") / "samples.npz")
    code, payload, err = _cli(capsys, ["batch", "cancer", "--inputs", inputs, "--method", "saliency",
                                       "--shard-rows", "8", "--out", str(tmp_path / "run.npz")])
    assert code == 0, err
    ws = open_workspace(home=home)
    try:
        (job,) = ws.jobs.list(cli_actor())
        assert (job.kind, job.priority, job.status, job.run) == ("dataset", "batch", "done", payload["run"])
        partial = ws.jobs.partial(job)
        assert partial["summary_progress"][:4].tolist() == [24, 32, 3, 4]  # 3 of 4 shards, 24 of 32 rows
        run = ws.runs.open(cli_actor(), payload["run"])
        assert run.info.page == "dataset" and run.info.summary["shards"] == 4
        saved = np.load(tmp_path / "run.npz")
        assert sorted(saved.files) == sorted(run.results)
        for key in saved.files:
            np.testing.assert_array_equal(saved[key], run.results[key])
        view = saved_dataset(run, "tabular")
        np.testing.assert_allclose(view.summary.mean_abs, np.abs(saved["values"]).mean(axis=0), rtol=1e-6)
        assert view.inputs.shape == (32, 30) and view.summary.complete
    finally:
        ws.close()
