"""Output explanations: why this prediction.

``engine`` (the batching engine: chunks, OOM back-off, progress) · ``methods/`` (one
module per attribution method, one registry) · ``baselines`` (reference inputs and
background sets) · ``precision`` (devices, fp32/bf16) · ``cache`` (attribution LRU) ·
``agreement`` (rank agreement between methods) · ``layer_attribution`` (attribution to
a hidden layer) · ``layer_importance`` (which layers matter, Grad-CAM) · ``aten_graph`` / ``aten_rules`` /
``pair_interpreter`` (the captured ATen graph, the DeepLIFT / SHAP rules planned on it, and its pairs run).
"""
