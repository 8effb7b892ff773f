"""Figures: pure functions that take results and return plotly figures, one module per area."""
