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
import torch._export.serde.serialize  # noqa: F401 - what the .pt2 reader needs
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


def _pt2(entries: dict[str, tuple[str, int]], records: dict[str, bytes]) -> bytes:
    """A .pt2 archive whose weight table maps each entry to (record, float32 element count)."""
    def meta(record: str, n: int) -> dict:
        return {"path_name": record, "is_param": True, "use_pickle": False, "tensor_meta": {
            "dtype": 7, "sizes": [{"as_int": n}], "requires_grad": False, "device": {"type": "cpu", "index": None},
            "strides": [{"as_int": 1}], "storage_offset": {"as_int": 0}, "layout": 7}}

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("archive/archive_format", b"pt2")
        zf.writestr("archive/models/model.json", json.dumps({"graph_module": {"graph": {"nodes": []}}}))
        zf.writestr("archive/data/weights/model_weights_config.json",
                    json.dumps({"config": {k: meta(*v) for k, v in entries.items()}}))
        for record, body in records.items():
            zf.writestr(f"archive/data/weights/{record}", body)
        zf.writestr("archive/data/constants/model_constants_config.json", json.dumps({"config": {}}))
    return out.getvalue()


def pt2_bomb() -> bytes:
    """A .pt2 whose weight table lists 200 entries of 400 MB each, all on one 0-byte record (torch reads
    an empty record as zeros of the entry's size)."""
    return _pt2({f"layer{i}.weight": ("weight_zeros", 100_000_000) for i in range(200)}, {"weight_zeros": b""})


def pt2_shared() -> bytes:
    """A .pt2 whose record backs a 2-element entry and a 1-element one (tied weights share one size)."""
    return _pt2({"a": ("weight_0", 2), "tied": ("weight_0", 2), "b": ("weight_0", 1)}, {"weight_0": bytes(8)})


def _bert_zip(config_edit=None, tokenizer: dict[str, int] | None = None) -> bytes:
    """A tiny BERT classifier's folder as a zip (config.json, model.safetensors, maybe tokenizer.json)."""
    config = {"model_type": "bert", "architectures": ["BertForSequenceClassification"], "vocab_size": 16,
              "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
              "max_position_embeddings": 16, "type_vocab_size": 2}
    if config_edit:
        config_edit(config)
    shapes = {"embeddings.word_embeddings.weight": (16, 8), "embeddings.position_embeddings.weight": (16, 8),
              "embeddings.token_type_embeddings.weight": (2, 8), "pooler.dense.weight": (8, 8),
              "encoder.layer.0.intermediate.dense.weight": (16, 8), "encoder.layer.0.intermediate.dense.bias": (16,),
              "encoder.layer.0.output.dense.weight": (8, 16)}
    for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
        shapes[f"encoder.layer.0.{name}.weight"] = (8, 8)
    for name in ("embeddings.LayerNorm", "encoder.layer.0.attention.output.LayerNorm", "encoder.layer.0.output.LayerNorm"):
        shapes[f"{name}.weight"] = (8,)
    for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                 "output.dense"):
        shapes[f"encoder.layer.0.{name}.bias"] = (8,)
    shapes.update({"embeddings.LayerNorm.bias": (8,), "encoder.layer.0.attention.output.LayerNorm.bias": (8,),
                   "encoder.layer.0.output.LayerNorm.bias": (8,), "pooler.dense.bias": (8,)})
    weights = {f"bert.{k}": torch.zeros(v) for k, v in shapes.items()}  # a complete BertForSequenceClassification
    weights.update({"classifier.weight": torch.zeros(2, 8), "classifier.bias": torch.zeros(2)})
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
    "shared.pt2": (pt2_shared, "CorruptFile", "entries 'a' and 'b' share the record 'weight_0' with different sizes"),
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


#: transformers' default configs (the sizes `estimate_parameters` reads, as ``config.to_dict()`` writes them)
#: and their sequence / image classification models' parameter counts (built on ``meta``, transformers 5.25).
#: SqueezeBERT (grouped projections) is the tightest of 32 model types checked; ALBERT shares its layers.
REAL_CONFIGS = [
    ({"model_type": "squeezebert", "embedding_size": 768, "hidden_size": 768, "intermediate_size": 3072,
      "num_hidden_layers": 12, "vocab_size": 30522}, 51_091_202),
    ({"model_type": "albert", "embedding_size": 128, "hidden_size": 4096, "intermediate_size": 16384,
      "num_hidden_groups": 1, "num_hidden_layers": 12, "vocab_size": 30000}, 222_603_778),
    ({"model_type": "mobilebert", "embedding_size": 128, "hidden_size": 512, "intermediate_size": 512,
      "num_hidden_layers": 24, "vocab_size": 30522}, 24_845_570),
    ({"model_type": "distilbert", "dim": 768, "hidden_dim": 3072, "n_layers": 6, "vocab_size": 30522}, 66_955_010),
    ({"model_type": "resnet", "depths": [3, 4, 6, 3], "embedding_size": 64, "hidden_sizes": [256, 512, 1024, 2048],
      "num_channels": 3}, 23_512_130),
    ({"model_type": "vit", "hidden_size": 768, "image_size": 224, "intermediate_size": 3072, "num_channels": 3,
      "num_hidden_layers": 12, "patch_size": 16}, 85_800_194),
]


def test_hf_config_estimate_is_a_lower_bound_of_real_models():
    from explain.loading.hf_sizing import estimate_parameters

    for config, real in REAL_CONFIGS:
        estimate, _, labels = estimate_parameters({**config, "id2label": {"0": "LABEL_0", "1": "LABEL_1"}})
        assert 0 <= estimate <= real and labels == 2, config["model_type"]
    assert estimate_parameters({"hidden_size": 8, "num_hidden_layers": 10**6})[0] == 64 * 10**6
    assert estimate_parameters({"num_hidden_layers": 12, "num_hidden_groups": 1, "hidden_size": 8})[0] == 64
    with pytest.raises(CorruptFile, match="negative size"):
        estimate_parameters({"vocab_size": -1})


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
