"""What changed between two versions of a model (issue 24), one concept per module:

``outputs`` (agreement, flipped inputs, probability shifts) · ``attributions`` (both versions
explained for A's predicted class, maps as shown, Spearman rank correlation per input) ·
``structure`` (layers added / removed / changed, parameters, non-zero parameters, dtypes, FLOPs,
size on disk) · ``training`` (both versions' logs overlaid) · ``comparison`` (`Comparison`, the
result, and `compare_models`, the one way to build it) · ``job`` (a ``compare`` job and its
``comparison`` run).
"""
