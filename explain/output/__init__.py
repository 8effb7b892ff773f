"""Output explanations: why this prediction.

``engine`` (the batching engine: chunks, OOM back-off, progress) · ``methods/`` (one
module per attribution method, one registry) · ``baselines`` (reference inputs and
background sets) · ``precision`` (devices, fp32/bf16) · ``cache`` (attribution LRU) ·
``agreement`` (rank agreement between methods) · ``layer_attribution`` (attribution to
a hidden layer) · ``layer_importance`` (which layers matter, Grad-CAM) · ``aten_graph`` / ``aten_rules`` (the captured ATen graph and the
DeepLIFT / SHAP rules applied on it).
"""
