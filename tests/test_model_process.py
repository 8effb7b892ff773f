"""A user's graph runs only in its sandboxed model process, never in the server (issue 19, item 1).

Every crafted model here is built in the test. The process under test (this
pytest process, standing in for the server) must never load or run the graph,
never crash, hang or grow: a crash, a hang or a memory bomb in the graph fails
that one request with one line, and the next request gets a fresh process.
"""
from __future__ import annotations

import io
import os
import resource
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from explain.errors import GlassboxError, TooLarge
from explain.loading import export as export_reader
from explain.loading.loader import load_model
from explain.loading.model_process import ModelProcessFailed, RemoteModule, live_processes
from explain.output.methods.base import get_method
from tests.crafted_models import TABULAR, Gated, MagicSpin, ZeroBomb, scripted


def _script(module: nn.Module) -> bytes:
    return scripted(module)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="module")
def plain_script() -> bytes:
    torch.manual_seed(0)
    return _script(Gated())


def test_a_torchscript_model_lives_in_its_process_and_the_server_never_loads_it(plain_script, monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("torch.jit.load ran in the server")

    monkeypatch.setattr(torch.jit, "load", refuse)
    model = load_model(plain_script, TABULAR)
    assert isinstance(model.module, RemoteModule) and model.process is not None
    assert "landlock-fs" in model.process.protections or "rlimit-as" in model.process.protections
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    # the same numbers as the graph run here (the test's own copy, loaded outside the patch)
    monkeypatch.undo()
    local = torch.jit.load(io.BytesIO(plain_script)).eval()
    want = torch.softmax(local(torch.from_numpy(x)), -1).detach().numpy()
    np.testing.assert_allclose(model.predict_proba(x), want, atol=1e-6)
    attribution = get_method("integrated_gradients").explain(model, x, use_cache=False)
    assert np.nanmax(attribution.completeness_error) < 1e-3  # IG completeness holds through the boundary
    assert model.parameter_count() == 10


def test_gradients_cross_the_boundary_exactly(plain_script):
    model = load_model(plain_script, TABULAR)
    local = torch.jit.load(io.BytesIO(plain_script)).eval()
    x = torch.randn(3, 4, requires_grad=True)
    (g_remote,) = torch.autograd.grad(model.module(x)[:, 1].sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    (g_local,) = torch.autograd.grad(local(x2)[:, 1].sum(), x2)
    torch.testing.assert_close(g_remote, g_local)


def test_a_pt2_program_is_deserialised_only_in_its_process(monkeypatch):
    torch.manual_seed(0)
    module = Gated().eval()
    buf = io.BytesIO()
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(module, (torch.zeros(2, 4),), dynamic_shapes=({0: batch},)), buf)

    def refuse(*_a, **_k):
        raise AssertionError("a .pt2 program was deserialised in the server")

    monkeypatch.setattr(export_reader, "_deserialize", refuse)
    model = load_model(buf.getvalue(), TABULAR)
    assert model.process is not None and model.exported_program is None
    assert model.extra["spec_source"] == "explicit"
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(model.predict_logits(x), module(torch.from_numpy(x)).detach().numpy(), atol=1e-6)
    deeplift = get_method("deeplift").explain(model, x, use_cache=False)  # the graph's own rules, in the child
    assert np.nanmax(deeplift.completeness_error) < 1e-5


def test_a_value_triggered_memory_bomb_is_refused_and_the_server_does_not_grow():
    before = _maxrss_mb()
    with pytest.raises(GlassboxError) as caught:
        load_model(_script(ZeroBomb()), TABULAR)  # vetting's random inputs pass; the zeros check fires
    assert isinstance(caught.value, (TooLarge, ModelProcessFailed))
    assert "\n" not in caught.value.reason
    assert _maxrss_mb() - before < 200


def test_a_refused_model_is_not_run_again_for_the_same_answer(monkeypatch):
    bomb = _script(ZeroBomb())
    with pytest.raises(GlassboxError) as first:
        load_model(bomb, TABULAR)

    def never(*_a, **_k):
        raise AssertionError("a refused model was started again")

    monkeypatch.setattr("explain.loading.model_process.ModelProcess.start", never)
    with pytest.raises(type(first.value)) as again:  # a page rerun: the remembered refusal, nothing run
        load_model(bomb, TABULAR)
    assert again.value.reason == first.value.reason


def test_a_crashed_model_process_fails_one_request_and_the_next_gets_a_new_process(plain_script):
    model = load_model(plain_script, TABULAR)
    x = np.ones((2, 4), np.float32)
    first = model.predict_logits(x)
    old_pid = model.process._channel.pid
    with pytest.raises(ModelProcessFailed, match="crashed its process"):
        model.process.call(os.abort, model, (), {})  # stands for a graph that segfaults
    np.testing.assert_allclose(model.predict_logits(x), first)  # served again, by a new child
    assert model.process._channel.pid != old_pid


def test_a_spin_on_a_magic_value_is_stopped_after_the_call_timeout(monkeypatch):
    model = load_model(_script(MagicSpin()), TABULAR)
    monkeypatch.setenv("GLASSBOX_MODEL_CALL_TIMEOUT_S", "3")
    with pytest.raises(ModelProcessFailed, match="did not finish"):
        model.predict_logits(np.full((1, 4), 7.0, np.float32))
    assert model.predict_logits(np.zeros((1, 4), np.float32)).shape == (1, 2)


def test_the_number_of_live_model_processes_is_capped(plain_script, monkeypatch):
    monkeypatch.setenv("GLASSBOX_MODEL_PROCESSES", "2")
    models = [load_model(plain_script, TABULAR) for _ in range(3)]
    assert len(live_processes()) <= 2
    x = np.ones((1, 4), np.float32)
    assert all(m.predict_logits(x).shape == (1, 2) for m in models)  # a stopped one starts again


def test_the_cli_refuses_a_bomb_with_exit_3_and_one_line(tmp_path):
    path = tmp_path / "bomb.pt"
    path.write_bytes(_script(ZeroBomb()))
    spec = tmp_path / "spec.json"
    spec.write_text(TABULAR.to_json())
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
        from explain.cli import main
        sys.exit(main(["inspect", {str(path)!r}, "--spec", {str(spec)!r}]))
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert run.returncode == 3, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert run.returncode != -signal.SIGKILL


def test_a_hugging_face_model_is_built_from_its_config_only_in_its_process(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, num_labels=3, max_position_embeddings=32)
    reference = transformers.BertForSequenceClassification(cfg).eval()
    reference.save_pretrained(tmp_path)

    def refuse(*_a, **_k):
        raise AssertionError("a Hugging Face model was built in the server")

    monkeypatch.setattr(transformers.BertForSequenceClassification, "from_pretrained", refuse)
    model = load_model(tmp_path)
    assert model.process is not None and not model.is_eager and model.format == "huggingface"
    ids = np.zeros((2, 32), dtype=np.int64)  # the spec's length: the config's positions
    ids[0, :4], ids[1, :2] = [2, 5, 7, 9], [3, 4]
    monkeypatch.undo()
    with torch.no_grad():
        want = reference(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy((ids != 0).astype(np.int64)))
    np.testing.assert_allclose(model.predict_logits(ids), want.logits.numpy(), atol=1e-5)
    ig = get_method("integrated_gradients").explain(model, ids, use_cache=False)  # on the embeddings, in the child
    assert np.nanmax(ig.completeness_error) < 0.05


def test_a_device_file_granted_to_a_sandboxed_child_opens_for_writing_and_nothing_else_does():
    """The Landlock rule a model process gets for its GPU's device files, shown on /dev/null."""
    from explain.loading.sandbox import run_in_sandbox

    code = textwrap.dedent("""
        applied = lock_down()
        report(phase="ready", protections=applied)
        def writable(path):
            try:
                with open(path, "w") as fh:
                    fh.write("x")
                return True
            except OSError:
                return False
        report(ok=True, null=writable("/dev/null"), tmp=writable("escape.txt"), landlock="landlock-fs" in applied)
    """)
    granted = run_in_sandbox(code, b"", devices=("/dev/null",))
    refused = run_in_sandbox(code, b"")
    assert granted.ok and refused.ok
    if not granted.final["landlock"]:
        pytest.skip("no Landlock on this kernel")
    assert "landlock-device:/dev/null" in granted.protections
    assert granted.final["null"] and not granted.final["tmp"]
    assert not refused.final["null"] and not refused.final["tmp"]


def test_a_hugging_face_cnn_says_it_has_no_attention_instead_of_failing(tmp_path):
    transformers = pytest.importorskip("transformers")
    from explain.errors import IncompatibleInput
    from explain.structure.attention import attention_unavailable_reason, capture_attention
    from explain.structure.layers import build_layer_table

    torch.manual_seed(0)
    cfg = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                    num_labels=2, image_size=32)
    transformers.ResNetForImageClassification(cfg).eval().save_pretrained(tmp_path)
    model = load_model(tmp_path)  # built from its config in its model process
    x = np.random.default_rng(0).normal(size=(2, *model.spec.input_shape)).astype(np.float32)
    reason = attention_unavailable_reason(model)
    assert reason and "no attention layers" in reason and "resnet" in reason
    with pytest.raises(IncompatibleInput, match="no attention layers"):
        capture_attention(model, x)
    assert any(row.name.endswith("encoder") or "stages" in row.name for row in build_layer_table(model, x).rows)
    from explain.output.layer_importance import grad_cam_layer

    default = grad_cam_layer(model, x)  # the last stage's map, not the stem (issue 20, item 4)
    assert "encoder.stages.1" in default and "embedder" not in default, default
    cam = get_method("grad_cam").explain(model, x, use_cache=False)
    assert cam.values.shape == x.shape and cam.params.get("layer") == default
