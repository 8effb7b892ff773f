"""The MODEL, ``--spec`` and ``--inputs`` arguments every subcommand shares.

`load_model_arg` is the one way a subcommand turns them into a `LoadedModel`,
so ``inspect``, ``methods``, ``attribute``, ``attention`` and ``report`` resolve
a spec the same way (`explain.loading.loader.resolve_spec`): ``--spec``, else the
spec the file carries, else a ``.pt2``'s signature, else the ``--inputs`` arrays
(``.npy`` / ``.npz``), else a refusal that names the flags to give.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

import sample_models
from explain.errors import UsageError
from explain.inputs.reading import InputBatch, model_ready_array, read_inputs
from explain.loading.loader import load_model
from explain.model import LoadedModel
from explain.spec import InputSpec, SpecNeeded

CLI_SPEC_HINT = ("Pass --spec SPEC.json or --inputs X.npy (model-ready: float N×C×H×W image, "
                 "float N×F tabular, integer N×L text ids).")


def load_model_arg(path: str, spec_path: str | None = None, inputs_path: str | None = None) -> LoadedModel:
    """A `LoadedModel` from a file path (or a bundled sample by name), its spec resolved.

    Args:
        path: the model file, or ``shapes`` / ``cancer`` / ``sentiment``.
        spec_path: ``--spec``: a spec JSON file; wins over everything else.
        inputs_path: ``--inputs``: when the model carries no spec, ``.npy`` / ``.npz``
            arrays tell it (float N×C×H×W image, float N×F tabular, integer N×L text).

    Raises:
        UsageError: a file that does not exist.
        SpecNeeded: nothing tells the spec; the message says which flag to give.
    """
    spec = None
    if spec_path:
        try:
            spec = InputSpec.from_json(Path(spec_path).read_bytes())
        except OSError as exc:
            raise UsageError(f"Cannot read the spec {spec_path} ({exc.strerror}).") from None
    if inputs_path and not Path(inputs_path).exists():
        raise UsageError(f"No such inputs file: {inputs_path}.")
    if not Path(path).exists():
        if path in sample_models.SAMPLE_NAMES:
            return sample_models.load_sample(path)
        raise UsageError(f"No such model file: {path}.")
    sample = model_ready_array(inputs_path) if inputs_path and spec is None else None
    try:
        return load_model(path, spec=spec, sample_input=sample)
    except SpecNeeded as exc:
        hint = CLI_SPEC_HINT
        if inputs_path and sample is None:
            hint = f"{Path(inputs_path).name} is not a .npy/.npz array, so it cannot stand in for a spec. {hint}"
        raise SpecNeeded(exc.reason, hint, guess=exc.guess) from None


def read_inputs_arg(path: str, model: LoadedModel) -> InputBatch:
    """An `InputBatch` (labels kept) from an inputs file, read as the model's spec says."""
    if not Path(path).exists():
        raise UsageError(f"No such inputs file: {path}.")
    return read_inputs(path, model.spec)


def load_inputs_arg(path: str, model: LoadedModel) -> np.ndarray:
    """A model-ready array from an inputs file (`read_inputs_arg`)."""
    return np.asarray(read_inputs_arg(path, model).array)


def model_file_arg(path: str) -> tuple[bytes, str]:
    """The bytes and name of the MODEL argument's file (a bundled sample's own file, a Hugging Face
    folder packed as `load_model` packs it): what an engine that loads the model elsewhere sends."""
    from explain.loading.huggingface import folder_as_zip
    from explain.loading.source import read_source

    if not Path(path).exists() and path in sample_models.SAMPLE_NAMES:
        file = sample_models.sample_file(path)
        return file.read_bytes(), file.name
    if Path(path).is_dir():
        return folder_as_zip(path)
    return read_source(path)
