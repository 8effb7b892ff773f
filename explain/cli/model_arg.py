"""The MODEL, ``--spec`` and ``--inputs`` arguments every subcommand shares.

`load_model_arg` is the one way a subcommand turns them into a `LoadedModel`,
so ``inspect``, ``methods``, ``attribute``, ``attention`` and ``report`` resolve
a spec the same way (`explain.loading.loader.resolve_spec`): ``--spec``, else the
spec the file carries, else a ``.pt2``'s signature, else the ``--inputs`` arrays
(``.npy`` / ``.npz``), else a refusal that names the flags to give.

``--inputs`` names a file or a folder (`input_files`): a folder's input files
(images, ``.npy`` / ``.npz``, ``.csv``, ``.txt``), hidden ones skipped, are read in
name order as one batch, up to `MAX_INPUT_FILES`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import sample_models
from explain.errors import UsageError
from explain.inputs.reading import InputBatch, model_ready_array, read_inputs
from explain.loading.loader import load_model
from explain.model import LoadedModel
from explain.spec import SpecNeeded

#: the files an ``--inputs`` folder contributes, by suffix: arrays for every model, the rest by modality.
ARRAY_SUFFIXES = (".npy", ".npz")
MODALITY_SUFFIXES = {
    "image": (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"),
    "tabular": (".csv", ".tsv"),
    "text": (".txt",),
}
#: the most files an ``--inputs`` folder may hold (a whole dataset is ``batch``'s).
MAX_INPUT_FILES = 1000

CLI_SPEC_HINT = ("Pass --spec SPEC.json or --inputs X.npy (model-ready: float N×C×H×W image, "
                 "float N×F tabular, integer N×L text ids).")


class CliVetting:
    """The CLI workspace's vetting results (`explain.workspace.vetting`), opened only when a loader
    asks (a graph to vet), so a subcommand that loads a safetensors file never opens the workspace;
    a workspace that cannot be opened keeps nothing (the graph is vetted as without one)."""

    def __init__(self):
        self._results = None

    def _open(self):
        if self._results is None:
            try:
                from explain.cli.workspace_arg import cli_workspace

                self._results = cli_workspace().vetting
            except Exception:  # noqa: BLE001 - no workspace: vet in this process only
                self._results = False
        return self._results or None

    def get(self, sha256: str, torch_version: str, settings: str):
        results = self._open()
        return results.get(sha256, torch_version, settings) if results else None

    def put(self, sha256: str, torch_version: str, settings: str, outcome: dict) -> None:
        results = self._open()
        if results:
            results.put(sha256, torch_version, settings, outcome)


def load_model_arg(path: str, spec_path: str | None = None, inputs_path: str | None = None) -> LoadedModel:
    """A `LoadedModel` from a file path (or a bundled sample by name), its spec resolved.

    Args:
        path: the model file, or ``shapes`` / ``cancer`` / ``sentiment``.
        spec_path: ``--spec``: a spec JSON file; wins over everything else.
        inputs_path: ``--inputs`` (a file or a folder, `input_files`): when the model carries
            no spec, ``.npy`` / ``.npz`` arrays tell it (float N×C×H×W image, float N×F tabular,
            integer N×L text); a folder's first array does.

    Raises:
        UsageError: a file or folder that does not exist, a folder without input files.
        SpecNeeded: nothing tells the spec; the message says which flag to give.
    """
    spec = None
    if spec_path:
        try:
            spec = Path(spec_path).read_bytes()  # a spec, or a causal .pt2's tokenizer.json (`loader.given_tokenizer`)
        except OSError as exc:
            raise UsageError(f"Cannot read the spec {spec_path} ({exc.strerror}).") from None
    files = input_files(inputs_path) if inputs_path else []
    if not Path(path).exists():
        if path in sample_models.ALL_SAMPLES:
            return sample_models.load_sample(path)
        raise UsageError(f"No such model file: {path}.")
    folder = bool(inputs_path) and Path(inputs_path).is_dir()
    arrays = [f for f in files if f.suffix.lower() in ARRAY_SUFFIXES] if folder else files
    sample = model_ready_array(arrays[0]) if arrays and spec is None else None
    try:
        return load_model(path, spec=spec, sample_input=sample, vetted=CliVetting())
    except SpecNeeded as exc:
        hint = CLI_SPEC_HINT
        if inputs_path and sample is None:
            what = "holds no .npy/.npz array" if folder else "is not a .npy/.npz array"
            hint = f"{Path(inputs_path).name} {what}, so it cannot stand in for a spec. {hint}"
        raise SpecNeeded(exc.reason, hint, guess=exc.guess) from None


def input_files(path: str, modality: str | None = None) -> list[Path]:
    """The files an ``--inputs`` path names: the file itself, or a folder's input files.

    A folder contributes its files (not its subfolders) whose suffix an input reader takes:
    ``.npy`` / ``.npz`` always, and with ``modality`` only that modality's own files (images,
    ``.csv`` / ``.tsv``, ``.txt``; others are left out), without it all of them; hidden files
    (``.name``) are skipped; the order is the names' sorted order.

    Raises:
        UsageError: no such file or folder, a folder with no input files, or one with more
            than `MAX_INPUT_FILES`.
    """
    given = Path(path)
    if not given.exists():
        raise UsageError(f"No such inputs file or folder: {path}.")
    if not given.is_dir():
        return [given]
    kinds = MODALITY_SUFFIXES.get(modality or "", tuple(s for group in MODALITY_SUFFIXES.values() for s in group))
    suffixes = ARRAY_SUFFIXES + kinds
    with os.scandir(given) as entries:
        names = sorted(e.name for e in entries
                       if not e.name.startswith(".") and e.is_file() and Path(e.name).suffix.lower() in suffixes)
    if not names:
        for_model = f" for a {modality} model" if modality else ""
        raise UsageError(f"The folder {path} has no input files{for_model} ({', '.join(suffixes)}).")
    if len(names) > MAX_INPUT_FILES:
        raise UsageError(f"The folder {path} has {len(names):,} input files, over the {MAX_INPUT_FILES:,} that --inputs reads.",
                         "Explain a whole dataset with `python -m explain batch`, or pass a folder of fewer files.")
    return [given / n for n in names]


def read_inputs_arg(path: str, model: LoadedModel) -> InputBatch:
    """An `InputBatch` (labels kept) from an inputs file or folder (`input_files`), read as the model's spec says."""
    files = input_files(path, model.spec.modality)
    return read_inputs(files if Path(path).is_dir() else path, model.spec)


def load_inputs_arg(path: str, model: LoadedModel) -> np.ndarray:
    """A model-ready array from an inputs file (`read_inputs_arg`)."""
    return np.asarray(read_inputs_arg(path, model).array)


def model_file_arg(path: str) -> tuple[bytes, str]:
    """The bytes and name of the MODEL argument's file (a bundled sample's own file, a Hugging Face
    folder packed as `load_model` packs it): what an engine that loads the model elsewhere sends."""
    from explain.loading.huggingface import folder_as_zip
    from explain.loading.source import read_source

    if not Path(path).exists() and path in sample_models.ALL_SAMPLES:
        file = sample_models.sample_file(path)
        return file.read_bytes(), file.name
    if Path(path).is_dir():
        return folder_as_zip(path)
    return read_source(path)
