"""The one-file HTML report.

``document`` (`Report`, `Section`, HTML helpers) · ``sections`` (model card, outputs,
environment) · ``analysis`` (structure, attention, training and evolution sections) ·
``template`` (inline CSS and page template).
"""
