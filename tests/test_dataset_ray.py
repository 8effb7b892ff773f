"""The Ray engine on a local Ray cluster this module starts: the same numbers as the local engine,
and the model reaches the actors as bytes that explain's loader checks there."""
from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest

import sample_models
from explain.cli import main
from explain.dataset import ray_engine
from explain.dataset.ray_engine import ModelFile, RayEngine
from explain.dataset.reading import read_dataset
from explain.dataset.run import explain_dataset
from explain.digest import digest_bytes
from explain.errors import Cancelled, UnsafeFile

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def one_thread():
    """torch on one thread here, as in each 1-CPU actor (Ray sets OMP_NUM_THREADS=1): a CPU kernel's
    summation order depends on its thread count, so only equal counts can be compared bit for bit."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(capsys, tmp_path, engine: str, *extra: str) -> tuple[dict, dict]:
    out = tmp_path / f"{engine}.npz"
    code = main(["batch", *extra, "--engine", engine, "--shard-rows", "5", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    with np.load(out) as data:
        return json.loads(captured.out), {k: data[k] for k in data.files}


@pytest.mark.parametrize(("sample", "fmt", "method"), [
    ("shapes", "safetensors", "integrated_gradients"),  # class-mean maps from 2 actors
    ("cancer", "torchscript", "saliency"),  # a user's graph: vetted in the sandbox again, in the actor
])
def test_engine_ray_equals_engine_local(capsys, tmp_path, one_thread, sample, fmt, method):
    model_path = str(sample_models.sample_file(sample, fmt))
    arrays = sample_models.sample_inputs(sample)
    inputs = str(tmp_path / "inputs.npz")
    np.savez(inputs, inputs=arrays["inputs"][:15], labels=arrays["labels"][:15])  # 3 shards on 2 actors
    args = [model_path, "--inputs", inputs, "--method", method] + (["--steps", "8"] if method == "integrated_gradients" else [])
    local_json, local = _batch(capsys, tmp_path, "local", *args)
    ray_json, remote = _batch(capsys, tmp_path, "ray", *args)
    actors = list(ray_engine._POOL["workers"])
    again_json, _ = _batch(capsys, tmp_path, "ray", *args)
    assert ray_engine._POOL["workers"] == actors  # the second run found the model loaded in the same actors
    assert again_json["summary"] == ray_json["summary"]
    assert ray_json["engine"] == "ray" and ray_json["shards"] == local_json["shards"] == 3
    assert local.keys() == remote.keys()
    for key in local:
        assert np.array_equal(local[key], remote[key], equal_nan=local[key].dtype.kind == "f"), key
    assert ray_json["summary"] == local_json["summary"]


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_is_refused_by_the_loader_in_the_actor_and_never_runs(tmp_path):
    model = sample_models.load_sample("cancer")
    marker = tmp_path / "pwned"
    data = pickle.dumps(_Payload(str(marker)), protocol=2)
    impostor = dataclasses.replace(model, sha256=digest_bytes(data))  # as if the pickle had loaded locally
    engine = RayEngine(impostor, ModelFile(data, "evil.pkl", model.spec.to_json()), actors=1)
    dataset = read_dataset(sample_models.sample_inputs("cancer")["inputs"][:4], model.spec)
    with pytest.raises(UnsafeFile, match="pickle"):
        list(explain_dataset(impostor, dataset, "saliency", engine=engine))
    assert not marker.exists()


def test_a_file_that_is_not_the_models_is_refused_before_any_actor_starts():
    model = sample_models.load_sample("cancer")
    with pytest.raises(Exception, match="not the file it was loaded from"):
        RayEngine(model, sample_models.sample_file("shapes").read_bytes())


def test_cancel_stops_the_ray_run_and_frees_the_actors():
    """Runs after the TorchScript case above, so the actors holding that model are already up."""
    model = sample_models.load_sample("cancer", "torchscript")
    engine = RayEngine(model, sample_models.sample_file("cancer", "torchscript"))
    dataset = read_dataset(sample_models.sample_inputs("cancer")["inputs"], model.spec)
    done = []

    def progress(_done, _total):  # the one cancel: the progress callback raises
        if done:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        for shard in explain_dataset(model, dataset, "saliency", shard_rows=4, engine=engine, progress=progress):
            done.append(shard.index)
    assert len(done) == 1 and ray_engine._POOL == {}  # in-flight shards cancelled, actors killed
