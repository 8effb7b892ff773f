"""Structure explanations: what the model is.

``layers`` (the layer table: shapes, parameters, FLOPs) · ``module_graph`` (the module
tree as a DOT graph) · ``module_probe`` / ``script_probe`` (running a model once and
recording per-module statistics, eager or TorchScript) · ``attention`` /
``attention_export`` / ``attention_summary`` (attention maps per layer and head) ·
``activations`` (activation and weight statistics). Attribution to layers (ranking,
Grad-CAM, one chosen layer) is `explain.output`'s.
"""
