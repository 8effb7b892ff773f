"""Training explanations: how the model got here.

``history`` (one tidy table from any log) · ``formats`` (CSV, JSON, TensorBoard,
checkpoint histories) · ``event_records`` (TensorBoard record framing, damage
reported) · ``downsampling`` (long logs averaged down) · ``findings`` (`diagnose`:
overfitting, plateaus, divergence, ...) · ``evolution`` (checkpoint-to-checkpoint
change of weights and explanations).
"""
