"""Inputs in, model-ready batches out: arrays, images, CSV rows and text lines.

``reading`` (`read_inputs`, `InputBatch`) · ``tabular`` (CSV) · ``text`` (tokenising
with the spec's vocabulary).
"""
