"""Glassbox's library: load, explain and report on PyTorch models.

Never imports streamlit: usable from a notebook, the CLI and tests exactly as
from the app. One import gives the public API (like ``captum.attr``)::

    import explain
    model = explain.load_model("model.pt2")
    batch = explain.read_inputs("x.npy", model.spec)
    attribution = explain.get_method("integrated_gradients").explain(model, batch.array)
    quality = explain.get_metric("deletion").evaluate(model, attribution)  # .per_input, .random_baseline

The names are resolved on first use, so ``import explain.errors`` stays light
(the sandbox child and the CLI's usage errors do not pay for torch's
submodules). The folders are the architecture: ``loading/``, ``inputs/``,
``output/``, ``structure/``, ``training/``, ``report/``, ``viz/``, ``cli/`` and the
small core types here (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

from explain.lazy import lazy_exports

#: public name -> the module that is its one home.
_EXPORTS = {
    "Attribution": "explain.attribution",
    "CorruptFile": "explain.errors",
    "GlassboxError": "explain.errors",
    "IncompatibleInput": "explain.errors",
    "InputRefused": "explain.errors",
    "TooLarge": "explain.errors",
    "UnsafeFile": "explain.errors",
    "UsageError": "explain.errors",
    "Cancelled": "explain.errors",
    "Finding": "explain.finding",
    "LoadedModel": "explain.model",
    "ParamSpec": "explain.params",
    "InputSpec": "explain.spec",
    "infer_spec": "explain.spec",
    "load_model": "explain.loading.loader",
    "sniff_format": "explain.loading.loader",
    "read_inputs": "explain.inputs.reading",
    "InputBatch": "explain.inputs.reading",
    "read_dataset": "explain.dataset.reading",
    "explain_dataset": "explain.dataset.run",
    "DatasetRun": "explain.dataset.run",
    "Explainer": "explain.output.methods",
    "get_method": "explain.output.methods",
    "all_methods": "explain.output.methods",
    "compatible_methods": "explain.output.methods",
    "Metric": "explain.output.metrics",
    "MetricResult": "explain.output.metrics",
    "get_metric": "explain.output.metrics",
    "all_metrics": "explain.output.metrics",
    "compatible_metrics": "explain.output.metrics",
    "evaluate_quality": "explain.output.metrics.quality",
    "Engine": "explain.output.engine",
    "make_baseline": "explain.output.baselines",
    "background_set": "explain.output.baselines",
    "explain_layer": "explain.output.layer_attribution",
    "describe_layers": "explain.structure.layers",
    "Comparison": "explain.compare.comparison",
    "compare_models": "explain.compare.comparison",
    "build_layer_table": "explain.structure.layers",
    "capture_attention": "explain.structure.attention",
    "read_history": "explain.training.history",
    "read_histories": "explain.training.history",
    "diagnose": "explain.training.findings",
    "read_checkpoints": "explain.training.checkpoints",
    "compute_weight_changes": "explain.training.evolution",
    "compute_checkpoint_drift": "explain.training.evolution",
    "build_report": "explain.report.sections",
    "Report": "explain.report.document",
    "Section": "explain.report.document",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
