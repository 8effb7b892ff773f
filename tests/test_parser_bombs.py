"""Small files that ask a parser for gigabytes are refused before it allocates (issue 19, item 3).

Each hostile file is built here (none is shipped), loaded with `load_model` in a forked
child of a fresh interpreter, and must be refused with Glassbox's own error while the
child's peak resident memory (its ``VmHWM``, torch included) stays under 1.5 GiB. The
child also runs under an address-space limit, so a regression fails here instead of
OOM-killing the machine. (``ru_maxrss`` of a process that was forked from pytest and then
exec'd counts pytest's own memory too, so the peak is read from ``/proc/self/status``.)
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from explain.errors import CorruptFile, TooLarge
from explain.loading import architectures
from explain.loading.script_check import check_pickle_globals

ROOT = Path(__file__).resolve().parent.parent
PEAK_LIMIT = int(1.5 * 2**30)

#: Forks one child per file; prints one JSON line per file: error type, message, peak RSS.
RUNNER = r"""
import json, os, resource, sys, traceback
import torch  # noqa: F401 - imported once, before the children fork
from explain.loading.loader import load_model

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

def vm_bytes():
    return status("VmSize")

for path in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        # a guard only: the measured peak is ru_maxrss below
        resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + 3 * 2**30, resource.RLIM_INFINITY))
        try:
            load_model(path)
            out = {"error": None, "message": "loaded"}
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            out = {"error": type(exc).__name__, "message": str(exc),
                   "trace": "" if hasattr(exc, "reason") else traceback.format_exc()[-2000:]}
        out["peak"] = status("VmHWM")
        os.write(write, json.dumps(out).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        out = json.loads(f.read() or '{"error": "Died", "message": "", "peak": 0}')
    os.waitpid(pid, 0)
    out.update(path=os.path.basename(path), base=status("VmRSS"))
    print(json.dumps(out), flush=True)
"""

#: `python -m explain ...` as it runs, then its own peak (VmHWM) written to the file $PEAK_FILE.
CLI = r"""
import os, runpy, sys
sys.argv = ["explain", *sys.argv[1:]]
try:
    runpy.run_module("explain", run_name="__main__", alter_sys=True)
finally:
    with open("/proc/self/status") as f, open(os.environ["PEAK_FILE"], "w") as out:
        out.write(next(l.split()[1] for l in f if l.startswith("VmHWM:")))
"""


# --------------------------------------------------------------------------
# the hostile files
# --------------------------------------------------------------------------
def safetensors_bomb() -> bytes:
    """About 260 bytes whose config asks for a tabular_mlp of 8 hidden layers of 40,000 units."""
    return save_safetensors({"w": torch.zeros(1)}, metadata={
        "glassbox.architecture": "tabular_mlp", "glassbox.config": json.dumps({"hidden": [40000] * 8})})


def pt2_bomb() -> bytes:
    """A .pt2 whose weight table lists 200 entries of 400 MB each, all on one 0-byte record (torch reads
    an empty record as zeros of the entry's size)."""
    meta = {"path_name": "weight_zeros", "is_param": True, "use_pickle": False, "tensor_meta": {
        "dtype": 7, "sizes": [{"as_int": 100_000_000}], "requires_grad": False,
        "device": {"type": "cpu", "index": None}, "strides": [{"as_int": 1}],
        "storage_offset": {"as_int": 0}, "layout": 7}}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("archive/archive_format", b"pt2")
        zf.writestr("archive/models/model.json", json.dumps({"graph_module": {"graph": {"nodes": []}}}))
        zf.writestr("archive/data/weights/model_weights_config.json",
                    json.dumps({"config": {f"layer{i}.weight": meta for i in range(200)}}))
        zf.writestr("archive/data/weights/weight_zeros", b"")
        zf.writestr("archive/data/constants/model_constants_config.json", json.dumps({"config": {}}))
    return out.getvalue()


def _bert_zip(config_edit=None, tokenizer: dict[str, int] | None = None) -> bytes:
    """A tiny BERT classifier's folder as a zip (config.json, model.safetensors, maybe tokenizer.json)."""
    config = {"model_type": "bert", "architectures": ["BertForSequenceClassification"], "vocab_size": 16,
              "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
              "max_position_embeddings": 16, "type_vocab_size": 2}
    if config_edit:
        config_edit(config)
    weights = {"bert.embeddings.word_embeddings.weight": torch.zeros(16, 8), "bert.filler": torch.zeros(4000)}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("bert/config.json", json.dumps(config))
        zf.writestr("bert/model.safetensors", save_safetensors(weights))
        if tokenizer is not None:
            zf.writestr("bert/tokenizer.json", json.dumps({
                "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
                "pre_tokenizer": None, "post_processor": None, "decoder": None,
                "model": {"type": "WordLevel", "vocab": tokenizer, "unk_token": "[UNK]"}}))
    return out.getvalue()


def hf_tokenizer_bomb() -> bytes:
    """A Hugging Face zip whose tokenizer.json has the id 400,000,000 (a 400-million-entry vocabulary list)."""
    return _bert_zip(tokenizer={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "huge": 400_000_000})


def hf_labels_bomb() -> bytes:
    """A Hugging Face zip whose config.json says num_labels: 100,000,000."""
    return _bert_zip(lambda config: config.update(num_labels=100_000_000))


def torchscript_bomb() -> bytes:
    """A real TorchScript archive whose data.pkl is a 380 MB pickle (1.7 MB deflated)."""
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), buf)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED,
                                                                             compresslevel=1) as zout:
        for info in zin.infolist():
            if info.filename.endswith("/data.pkl"):
                with zout.open(info.filename, "w", force_zip64=True) as f:
                    f.write(b"\x80\x02")
                    chunk = b"N" * 2**20  # NONE opcodes
                    for _ in range(380):
                        f.write(chunk)
                    f.write(b".")
            else:
                zout.writestr(info.filename, zin.read(info))
    return out.getvalue()


BOMBS = {
    "mlp.safetensors": (safetensors_bomb, "TooLarge", "asks for 11,201,600,002 parameters, over the"),
    "zeros.pt2": (pt2_bomb, "CorruptFile", "declares 400,000,000 bytes, but its record 'weight_zeros' holds 0"),
    "tokenizer.zip": (hf_tokenizer_bomb, "CorruptFile", "tokenizer.json has the id 400,000,000, but the model's vocab"),
    "labels.zip": (hf_labels_bomb, "TooLarge", "config.json asks for 100,000,000 labels, over the 100,000 limit"),
    "pickle.ts.pt": (torchscript_bomb, "TooLarge", "data.pkl is a 380 MiB pickle, over the 64 MiB"),
}


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bombs")
    for name, (build, _, _) in BOMBS.items():
        (folder / name).write_bytes(build())
    return folder


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "GLASSBOX_SANDBOX_ZYGOTE": "0"}


def test_each_bomb_is_refused_in_a_child_that_stays_under_1_5_gib(bombs, tmp_path):
    """Every bomb through `load_model`, and one through ``python -m explain inspect`` (run alongside)."""
    assert (bombs / "mlp.safetensors").stat().st_size < 300 and (bombs / "zeros.pt2").stat().st_size < 80_000
    peak_file = tmp_path / "cli-peak"
    cli = subprocess.Popen([sys.executable, "-c", CLI, "inspect", str(bombs / "mlp.safetensors")], cwd=ROOT,
                           env={**_env(), "PEAK_FILE": str(peak_file)}, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        run = subprocess.run([sys.executable, "-c", RUNNER, *(str(bombs / name) for name in BOMBS)], cwd=ROOT,
                             env=_env(), capture_output=True, text=True, timeout=240)
        cli_out, cli_err = cli.communicate(timeout=120)
    finally:
        cli.kill()
    assert run.returncode == 0, run.stderr[-3000:]
    results = {r["path"]: r for r in map(json.loads, run.stdout.splitlines())}
    for name, (_, error, message) in BOMBS.items():
        got = results[name]
        # the forked child's own high-water mark, plus everything its parent had mapped after importing torch
        # (pages the child shares without touching them are not in its VmHWM): what a fresh process would peak at
        peak = got["peak"] + got["base"]
        print(f"{name}: {got['error']}, peak at most {peak / 2**20:.0f} MiB")
        assert got["error"] == error and message in got["message"], got
        assert "\n" not in got["message"]
        assert peak < PEAK_LIMIT, f"{name} peaked at {peak / 2**20:.0f} MiB"

    lines = cli_err.strip().splitlines()
    assert cli.returncode == 3 and cli_out == ""
    assert len(lines) == 1 and "asks for 11,201,600,002 parameters" in lines[0] and "GLASSBOX_MAX_PARAMETERS" in lines[0]
    print(f"python -m explain inspect mlp.safetensors: exit 3, peak {int(peak_file.read_text()) / 2**10:.0f} MiB")
    assert int(peak_file.read_text()) * 1024 < PEAK_LIMIT


# --------------------------------------------------------------------------
# the bounds one by one
# --------------------------------------------------------------------------
def test_architecture_configs_are_sized_exactly_before_building():
    for name in architectures.list_architectures():
        model = architectures.build_architecture(name)
        size = architectures.estimate_size(name)
        assert size.parameters == sum(t.numel() for t in model.state_dict().values())
        assert size.layers == sum(1 for _ in model.modules())
    wide = {"widths": [8, 16, 16], "strides": [1, 2, 3], "in_channels": 1}
    assert architectures.estimate_size("shapes_resnet", wide).parameters == sum(
        t.numel() for t in architectures.build_architecture("shapes_resnet", wide).state_dict().values())


def test_config_caps_are_operator_settings(monkeypatch):
    monkeypatch.setenv("GLASSBOX_MAX_PARAMETERS", "1000")
    with pytest.raises(TooLarge, match="asks for 4,130 parameters, over the 1,000 limit.*GLASSBOX_MAX_PARAMETERS"):
        architectures.build_architecture("tabular_mlp")
    monkeypatch.delenv("GLASSBOX_MAX_PARAMETERS")
    monkeypatch.setenv("GLASSBOX_MAX_LAYERS", "10")
    with pytest.raises(TooLarge, match="layers, over the 10 limit"):
        architectures.build_architecture("tabular_mlp", {"hidden": [1] * 5})
    monkeypatch.delenv("GLASSBOX_MAX_LAYERS")
    monkeypatch.setenv("GLASSBOX_MAX_ACTIVATIONS", "100")
    with pytest.raises(TooLarge, match="activation elements per sample"):
        architectures.build_architecture("text_transformer")


def test_a_config_needing_more_than_the_weights_hold_is_refused_unbuilt(monkeypatch):
    from explain.errors import IncompatibleInput
    from explain.loading.weights import load_safetensors_parts

    built = []
    monkeypatch.setattr(architectures.TabularMLP, "__init__", lambda *a, **k: built.append(1))
    data = save_safetensors({"w": torch.zeros(100)}, metadata={
        "glassbox.architecture": "tabular_mlp", "glassbox.config": json.dumps({"hidden": [300]})})
    with pytest.raises(IncompatibleInput, match="needs 9,902 parameters, the weights hold 100 values"):
        load_safetensors_parts(data)
    assert not built


def test_pt2_records_shared_between_entries_of_different_sizes_are_refused():
    from explain.loading.export import check_payload_table

    entry = {"path_name": "weight_0", "is_param": True, "use_pickle": False, "tensor_meta": {
        "dtype": 7, "sizes": [{"as_int": 2}], "requires_grad": False, "device": {"type": "cpu", "index": None},
        "strides": [{"as_int": 1}], "storage_offset": {"as_int": 0}, "layout": 7}}
    other = json.loads(json.dumps(entry))
    other["tensor_meta"]["sizes"] = [{"as_int": 1}]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/data/weights/weight_0", b"\0" * 8)
    from torch._export.serde import schema
    from torch._export.serde.serialize import _dict_to_dataclass

    zf = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    tied = _dict_to_dataclass(schema.PayloadConfig, {"config": {"a": entry, "b": entry}})
    check_payload_table(zf, tied, "a/data/weights/", "weights")  # tied weights: same size, one record
    mixed = _dict_to_dataclass(schema.PayloadConfig, {"config": {"a": entry, "b": other}})
    with pytest.raises(CorruptFile, match="share the record 'weight_0' with different sizes"):
        check_payload_table(zf, mixed, "a/data/weights/", "weights")


def test_pickles_are_scanned_as_a_capped_stream(monkeypatch):
    monkeypatch.setenv("GLASSBOX_MAX_PICKLE_OPCODES", "1000")
    check_pickle_globals(b"\x80\x02" + b"N" * 900 + b".", "data.pkl")
    with pytest.raises(TooLarge, match="more than 1,000 pickle opcodes.*GLASSBOX_MAX_PICKLE_OPCODES"):
        check_pickle_globals(io.BytesIO(b"\x80\x02" + b"N" * 5000 + b"."), "data.pkl")
    # BINBYTES8 announcing a terabyte: refused before anything is read
    with pytest.raises(TooLarge, match="pickle over the 64 MiB"):
        check_pickle_globals(b"\x80\x04\x8e" + (2**40).to_bytes(8, "little"), "data.pkl")
    with pytest.raises(CorruptFile, match="not a valid pickle"):
        check_pickle_globals(b"\x80\x02N", "data.pkl")


def test_tokenizer_json_size_and_ids_are_bounded(monkeypatch):
    from tokenizers import Tokenizer, models

    from explain.inputs.text import tokenizer_vocab

    text = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "a": 7}, unk_token="[UNK]")).to_str()
    assert tokenizer_vocab(text, 8)["a"] == 7
    with pytest.raises(CorruptFile, match="has the id 7, but the model's vocabulary has 4 entries"):
        tokenizer_vocab(text, 4)
    monkeypatch.setenv("GLASSBOX_MAX_VOCABULARY", "5")
    with pytest.raises(TooLarge, match="id 7, over the 5-token vocabulary limit"):
        tokenizer_vocab(text)
    monkeypatch.setenv("GLASSBOX_MAX_TOKENIZER_MB", "0.0001")
    with pytest.raises(TooLarge, match="tokenizer.json is 0 MiB, over the 0 MiB limit"):
        tokenizer_vocab(text)


def test_hf_config_estimate_is_a_lower_bound_of_real_models():
    pytest.importorskip("transformers")
    from transformers import (
        AlbertConfig,
        AlbertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    from explain.loading.huggingface import estimate_parameters

    for config, cls in (
        (AlbertConfig(vocab_size=50, embedding_size=8, hidden_size=32, num_hidden_layers=6, num_attention_heads=2,
                      intermediate_size=64), AlbertForSequenceClassification),
        (DistilBertConfig(vocab_size=50, dim=32, n_layers=2, n_heads=2, hidden_dim=64), DistilBertForSequenceClassification),
        (ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, num_labels=5), ViTForImageClassification),
    ):
        raw = json.loads(json.dumps(config.to_dict()))  # config.json as save_pretrained writes it, defaults included
        with torch.device("meta"):
            real = sum(p.numel() for p in cls(config).parameters())
        estimate, layers, labels = estimate_parameters(raw)
        assert 0 < estimate <= real and layers == config.num_hidden_layers and labels == config.num_labels


def test_an_upload_is_opened_once_and_its_members_read_within_their_caps(bombs, monkeypatch):
    from explain.loading import source
    from explain.loading.loader import load_model

    opened = []
    real = source.open_zip
    monkeypatch.setattr(source, "open_zip", lambda *a, **k: opened.append(a[1]) or real(*a, **k))
    for name in ("tokenizer.zip", "pickle.ts.pt"):
        opened.clear()
        with pytest.raises((CorruptFile, TooLarge)):
            load_model(bombs / name)
        assert opened == ["zip"], name  # the sniffer's archive is the reader's
    monkeypatch.setenv("GLASSBOX_MAX_TOKENIZER_MB", "0.00001")
    with pytest.raises(TooLarge, match="bert/tokenizer.json is 0.0 MiB, over the 0.0 MiB.*GLASSBOX_MAX_TOKENIZER_MB"):
        load_model(bombs / "tokenizer.zip")
