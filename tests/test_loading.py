"""explain.loading.loader: every accepted format round-trips, malicious files never run.

Malicious files carry a ``__reduce__`` payload that would create a marker file;
each test asserts the refusal *and* that the marker never appears.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from explain.errors import CorruptFile, IncompatibleInput, TooLarge, UnsafeFile
from explain.loading import vetting
from explain.loading.architectures import build_architecture
from explain.loading.loader import load_model, sniff_format
from explain.spec import SPEC_FILENAME, InputSpec

ROOT = Path(__file__).resolve().parent.parent
SPEC = InputSpec("tabular", (30,), class_names=["benign", "malignant"], name="tiny")


class Payload:
    """Unpickling this runs ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class OpenPayload(Payload):
    """Unpickling this runs ``builtins.open(marker, "w")``."""

    def __reduce__(self):
        return (open, (self.marker, "w"))


class Hang(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = 0
        while True:
            i += 1
        return x


class MemoryHog(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = torch.ones(1 << 31)  # 8 GiB of float32, over the child's 4 GiB address space
        return x[:, :2] + big.sum()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tabular_mlp in every format, its eager outputs and a probe batch."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny")
    model = build_architecture("tabular_mlp").eval()
    x = torch.randn(5, 30)
    with torch.no_grad():
        ref = model(x).numpy()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    meta = {"glassbox.architecture": "tabular_mlp", "glassbox.config": "{}", "glassbox.spec": SPEC.to_json()}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "model.safetensors"), metadata=meta)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "bare.safetensors"))
    torch.save(sd, d / "state.pt")
    ckpt = {"model_state_dict": sd, "epoch": 7, "history": [{"epoch": 1, "val_loss": 0.5}],
            "architecture": "tabular_mlp", "config": {}, "spec": SPEC.to_dict(), "optimizer": {"lr": 0.1}}
    torch.save(ckpt, d / "epoch_07.ckpt")
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3}, d / "lightning.ckpt")
    torch.jit.save(torch.jit.script(model), str(d / "model.torchscript.pt"), _extra_files={SPEC_FILENAME: SPEC.to_json()})
    extra = {SPEC_FILENAME: SPEC.to_json()}
    dyn = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    torch.export.save(dyn, str(d / "model.pt2"), extra_files=extra)
    torch.export.save(torch.export.export(model, (x[:1],)), str(d / "model_static.pt2"), extra_files=extra)
    return {"dir": d, "model": model, "x": x.numpy(), "ref": ref}


def _rewrite_zip(src: Path, dst: Path, replace: dict, add: dict | None = None) -> Path:
    """Copy a zip, replacing members by path suffix (bytes or a bytes -> bytes function)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        root = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            data = zin.read(info.filename)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new(data) if callable(new) else new
            zout.writestr(info.filename, data)
        for path, data in (add or {}).items():
            zout.writestr(f"{root}/{path}", data)
    return dst


def _pickled(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# --------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "filename, fmt, fixed",
    [
        ("model.safetensors", "safetensors", None),
        ("bare.safetensors", "safetensors", None),
        ("state.pt", "state_dict", None),
        ("epoch_07.ckpt", "checkpoint", None),
        ("lightning.ckpt", "checkpoint", None),
        ("model.pt2", "export", None),
        ("model_static.pt2", "export", 1),
    ],
)
def test_every_weight_and_export_format_round_trips(tiny, filename, fmt, fixed):
    path = tiny["dir"] / filename
    lm = load_model(path, spec=None if "model" in filename or "epoch" in filename else SPEC)
    assert lm.format == fmt
    assert lm.fixed_batch_size == fixed
    assert lm.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert lm.spec.class_names == ["benign", "malignant"] and lm.modality == "tabular"
    np.testing.assert_allclose(lm.predict_logits(tiny["x"]), tiny["ref"], atol=1e-5, rtol=0)
    assert lm.parameter_count() == sum(p.numel() for p in tiny["model"].parameters())
    if lm.is_eager:
        assert lm.architecture == "tabular_mlp" and not lm.module.training
        assert all(p.requires_grad for p in lm.module.parameters())


def test_checkpoint_extra_and_bytes_upload_with_a_wrong_extension(tiny):
    data = (tiny["dir"] / "epoch_07.ckpt").read_bytes()
    lm = load_model(data, filename="weights.safetensors")  # content wins over the name
    assert lm.format == "checkpoint"
    assert lm.extra == {"epoch": 7, "history": [{"epoch": 1, "val_loss": 0.5}], "spec_source": "embedded"}
    assert lm.name == "tiny"  # the embedded spec's name


def test_torchscript_round_trips_through_the_sandbox(tiny):
    lm = load_model(tiny["dir"] / "model.torchscript.pt")
    assert lm.format == "torchscript" and lm.spec.name == "tiny"
    np.testing.assert_allclose(lm.predict_logits(tiny["x"]), tiny["ref"], atol=1e-5, rtol=0)


def test_spec_resolution_order(tiny):
    path = tiny["dir"] / "model.safetensors"
    other = InputSpec("tabular", (30,), class_names=["no", "yes"])
    assert load_model(path, other.to_json()).spec.class_names == ["no", "yes"]  # explicit > embedded
    assert load_model(path, other.to_dict()).spec.class_names == ["no", "yes"]
    bare = tiny["dir"] / "bare.safetensors"
    with pytest.raises(IncompatibleInput, match="no input spec"):
        load_model(bare)
    inferred = load_model(bare, sample_input=tiny["x"])
    assert inferred.spec.modality == "tabular" and inferred.spec.class_names == ["class 0", "class 1"]
    with pytest.raises(IncompatibleInput, match="names 3 classes but the model returns 2"):
        load_model(path, InputSpec("tabular", (30,), class_names=["a", "b", "c"]))
    with pytest.raises(IncompatibleInput, match="fails on an input of shape"):
        load_model(path, InputSpec("tabular", (12,)))


def test_samples_round_trip_in_every_shipped_format():
    import sample_models

    checked = 0
    for name in sample_models.SAMPLE_NAMES:
        d = sample_models.sample_dir(name)
        x = np.load(d / "samples.npz", allow_pickle=False)["inputs"][:6]
        ref = load_model(d / "model.safetensors").predict_logits(x)
        files = ["model.pt2", "model_static.pt2"] + sorted(p.name for p in (d / "checkpoints").glob("*.pt"))[-1:]
        if name == "sentiment":  # one TorchScript sample keeps the sandbox cost down
            files.append("model.torchscript.pt")
        for f in files:
            p = d / f if (d / f).exists() else d / "checkpoints" / f
            np.testing.assert_allclose(load_model(p).predict_logits(x), ref, atol=1e-4, rtol=0, err_msg=f"{name}/{f}")
            checked += 1
    assert checked == 3 * 3 + 1  # .pt2, static .pt2 and the last checkpoint per sample; one TorchScript


# --------------------------------------------------------------------------
# refused: malicious pickles
# --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["zip_pt", "legacy_pth", "ckpt_dict", "bare_pickle", "open_payload"])
def test_malicious_pickles_are_refused_and_never_run(tmp_path, kind):
    marker = tmp_path / "PWNED"
    path = tmp_path / {"legacy_pth": "evil.pth", "ckpt_dict": "evil.ckpt", "bare_pickle": "evil.pkl"}.get(kind, "evil.pt")
    if kind == "zip_pt":
        torch.save(Payload(marker), path)
    elif kind == "open_payload":
        torch.save({"weight": torch.zeros(2), "x": OpenPayload(marker)}, path)
    elif kind == "legacy_pth":
        torch.save(Payload(marker), path, _use_new_zipfile_serialization=False)
    elif kind == "ckpt_dict":
        torch.save({"model_state_dict": build_architecture("tabular_mlp").state_dict(), "epoch": 1,
                    "history": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UnsafeFile) as info:
        load_model(path, SPEC)
    assert "code" in str(info.value)
    if kind != "bare_pickle":
        assert "posix.system" in str(info.value) or "builtins.open" in str(info.value) or "io.open" in str(info.value)
    assert not marker.exists()


def test_trusted_mode_loads_full_pickles_only_when_on(tmp_path, monkeypatch, tiny):
    path = tmp_path / "whole_model.pt"
    torch.save(tiny["model"], path)  # pickles explain.loading.architectures.TabularMLP itself
    monkeypatch.delenv("GLASSBOX_TRUSTED", raising=False)
    with pytest.raises(UnsafeFile, match="TabularMLP.*GLASSBOX_TRUSTED"):
        load_model(path, SPEC)
    lm = load_model(path, SPEC, trusted=True)
    assert lm.format == "pickle"
    np.testing.assert_allclose(lm.predict_logits(tiny["x"]), tiny["ref"], atol=1e-6, rtol=0)
    monkeypatch.setenv("GLASSBOX_TRUSTED", "1")
    assert load_model(path, SPEC).format == "pickle"
    with pytest.raises(UnsafeFile):
        load_model(path, SPEC, trusted=False)  # the argument wins over the environment


# --------------------------------------------------------------------------
# refused: crafted .pt2 archives
# --------------------------------------------------------------------------
def test_pt2_sample_inputs_payload_is_refused_and_never_runs(tiny, tmp_path):
    marker = tmp_path / "PWNED"
    evil = _rewrite_zip(tiny["dir"] / "model.pt2", tmp_path / "evil.pt2",
                        {"data/sample_inputs/model.pt": _pickled((Payload(marker),))})
    with pytest.raises(UnsafeFile, match="sample-inputs blob.*posix.system"):
        load_model(evil)
    assert not marker.exists()


def test_pt2_pickled_weight_payload_is_refused(tiny, tmp_path):
    marker = tmp_path / "PWNED"

    def pickle_first_weight(data: bytes) -> bytes:
        table = json.loads(data)
        first = next(iter(table["config"].values()))
        first.update(path_name="weight_evil", use_pickle=True)
        return json.dumps(table).encode()

    evil = _rewrite_zip(tiny["dir"] / "model.pt2", tmp_path / "evil.pt2",
                        {"model_weights_config.json": pickle_first_weight},
                        add={"data/weights/weight_evil": _pickled(Payload(marker))})
    with pytest.raises(UnsafeFile, match="weights entry"):
        load_model(evil)
    assert not marker.exists()


def test_export_deserializer_cannot_fall_back_to_full_unpickling(tmp_path):
    from torch._export.serde import serialize

    from explain.loading.export import refuse_pickle_fallback

    marker = tmp_path / "PWNED"
    original = serialize.deserialize_torch_artifact
    with refuse_pickle_fallback():
        assert serialize.deserialize_torch_artifact(_pickled(({"x": torch.ones(2)},)))[0]["x"].sum() == 2
        with pytest.raises(UnsafeFile, match="posix.system"):
            serialize.deserialize_torch_artifact(_pickled((Payload(marker),)))
    assert serialize.deserialize_torch_artifact is original
    assert not marker.exists()


def _edit_program(tiny, tmp_path, edit) -> Path:
    def apply(data: bytes) -> bytes:
        program = json.loads(data)
        edit(program)
        return json.dumps(program).encode()

    return _rewrite_zip(tiny["dir"] / "model.pt2", tmp_path / "edited.pt2", {"models/model.json": apply})


def test_pt2_shape_expression_payload_is_refused(tiny, tmp_path):
    marker = tmp_path / "PWNED"

    def edit(program):  # torch would sympify (eval) this
        text = json.dumps(program).replace("Symbol('s", f"__import__('os').system('touch {marker}') or Symbol('s", 1)
        program.clear()
        program.update(json.loads(text))

    with pytest.raises(UnsafeFile, match="shape expression"):
        load_model(_edit_program(tiny, tmp_path, edit))
    assert not marker.exists()


def test_pt2_guards_code_is_never_executed(tiny, tmp_path):
    marker = tmp_path / "PWNED"
    path = _edit_program(tiny, tmp_path, lambda p: p.update(guards_code=[f"__import__('os').system('touch {marker}') == 0"]))
    lm = load_model(path)
    np.testing.assert_allclose(lm.predict_logits(tiny["x"]), tiny["ref"], atol=1e-5, rtol=0)
    assert not marker.exists()


@pytest.mark.parametrize("target", ["builtins.eval", "torch.ops.mylib.custom.default", "torch.ops.aten.from_file.default"])
def test_pt2_foreign_operators_are_refused_by_name(tiny, tmp_path, target):
    def edit(program):
        program["graph_module"]["graph"]["nodes"][0]["target"] = target

    with pytest.raises(UnsafeFile, match=target.replace(".", r"\.")):
        load_model(_edit_program(tiny, tmp_path, edit))


def test_pt2_node_names_that_are_not_identifiers_are_refused(tiny, tmp_path):
    def edit(program):
        node = program["graph_module"]["graph"]["nodes"][0]
        node["outputs"][0]["as_tensor"]["name"] = "x = __import__('os')"

    with pytest.raises(UnsafeFile, match="not an identifier"):
        load_model(_edit_program(tiny, tmp_path, edit))


# --------------------------------------------------------------------------
# refused: TorchScript that crashes, hangs or hogs memory
# --------------------------------------------------------------------------
def _script_bytes(module: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buf, _extra_files={SPEC_FILENAME: SPEC.to_json()})
    return buf.getvalue()


def test_torchscript_that_hangs_is_stopped(monkeypatch):
    monkeypatch.setenv("GLASSBOX_SANDBOX_TIMEOUT_S", "3")
    with pytest.raises(UnsafeFile, match="did not finish within 3 s"):
        load_model(_script_bytes(Hang()), filename="hang.pt")
    assert torch.ones(1).item() == 1.0  # this process is fine


def test_torchscript_that_needs_too_much_memory_is_refused():
    with pytest.raises(TooLarge, match="more memory"):
        load_model(_script_bytes(MemoryHog()), filename="hog.pt")


def test_torchscript_loader_crash_is_contained(monkeypatch, tiny):
    monkeypatch.setattr(vetting, "TORCHSCRIPT_CHILD_CODE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    with pytest.raises(CorruptFile, match="crashed the loader \\(SIGSEGV\\)"):
        load_model(tiny["dir"] / "model.torchscript.pt")


def test_damaged_torchscript_code_is_refused(tiny, tmp_path):
    path = _rewrite_zip(tiny["dir"] / "model.torchscript.pt", tmp_path / "damaged.pt",
                        {".py": b"def forward(self x):\n  return ((("})
    with pytest.raises(CorruptFile, match="TorchScript file cannot be loaded"):
        load_model(path)


# --------------------------------------------------------------------------
# refused: not a model, damaged, too large, mismatched
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.pt", b"", "empty"),
        ("notes.pt", b"epoch,loss\n1,0.5\n", "text file, not a model"),
        ("spec.safetensors", SPEC.to_json().encode(), "spec \\(JSON\\), not a model"),
        ("inputs.pt", b"\x93NUMPY\x01\x00v\x00", "NumPy array, not a model"),
        ("random.bin", bytes(range(256)) * 4, "not a model format Glassbox recognises"),
        ("cut.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\"", "safetensors header"),
    ],
)
def test_not_a_model_gives_a_clear_message(name, content, message):
    with pytest.raises(CorruptFile, match=message):
        load_model(content, SPEC, filename=name)


@pytest.mark.parametrize("filename", ["state.pt", "model.torchscript.pt", "model.pt2", "model.safetensors"])
def test_truncated_files_are_corrupt_not_crashes(tiny, filename):
    data = (tiny["dir"] / filename).read_bytes()
    with pytest.raises(CorruptFile, match="truncated or damaged"):
        load_model(data[: len(data) * 2 // 3], SPEC, filename=filename)


def test_size_limit_is_enforced(tiny, monkeypatch):
    monkeypatch.setenv("GLASSBOX_MAX_UPLOAD_MB", "0.001")
    with pytest.raises(TooLarge, match="over the 0 MiB limit.*GLASSBOX_MAX_UPLOAD_MB"):
        load_model(tiny["dir"] / "model.safetensors")


def test_weights_that_do_not_fit_name_the_keys(tiny, tmp_path):
    sd = {k: v.contiguous() for k, v in tiny["model"].state_dict().items()}
    sd["extra.weight"] = torch.zeros(3)
    sd["head.weight"] = torch.zeros(5, 32)
    path = tmp_path / "wrong.safetensors"
    save_file(sd, str(path), metadata={"glassbox.architecture": "tabular_mlp"})
    with pytest.raises(IncompatibleInput) as info:
        load_model(path, SPEC)
    text = str(info.value)
    assert "unexpected keys: extra.weight" in text and "head.weight (file [5, 32], model [2, 32])" in text
    save_file({"w": torch.zeros(3, 3)}, str(tmp_path / "alien.safetensors"))
    with pytest.raises(IncompatibleInput, match="fit none of the registered.*TorchScript or torch.export .pt2"):
        load_model(tmp_path / "alien.safetensors", SPEC)


def test_sniffing_reads_content_not_extension(tiny):
    assert sniff_format((tiny["dir"] / "model.pt2").read_bytes(), "x.safetensors") == "export"
    assert sniff_format((tiny["dir"] / "model.torchscript.pt").read_bytes(), "x.pt2") == "torchscript"
    assert sniff_format((tiny["dir"] / "state.pt").read_bytes(), "x.bin") == "torch"
    assert sniff_format((tiny["dir"] / "model.safetensors").read_bytes(), "x.pt") == "safetensors"
