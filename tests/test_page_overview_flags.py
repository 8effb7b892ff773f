"""The Overview's layer attribution flags a completeness error above its tolerance, and says why
(a path around the layer, or too few steps); a layer every path goes through is not flagged."""
from __future__ import annotations

import re
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "views" / "overview.py")


def _layer_caption(at: AppTest) -> str:
    return next(c.value for c in at.caption if "Σ over the layer" in c.value)


def test_overview_flags_a_bypassed_layer_and_not_an_exact_one():
    from explain.output.layer_attribution import LAYER_TOLERANCE

    at = AppTest.from_file(PAGE, default_timeout=240)
    at.session_state["gb_sample"] = "shapes"
    at.session_state["gb_source"] = "sample"
    at.run()
    assert not at.exception, at.exception
    # the shortcut of a residual block: the block's other branch bypasses it (error ~0.6 on the samples)
    at.selectbox(key="gb_ov_layer").set_value("layer1.downsample").run()
    assert not at.exception and not at.error
    caption = _layer_caption(at)
    assert caption.startswith("Σ over the layer") and ":orange[**⚠ completeness error" in caption
    err = float(re.search(r"completeness error ([0-9.]+) > tolerance", caption).group(1))
    assert err > LAYER_TOLERANCE == 0.05
    assert "> tolerance 0.05: raise steps, or a path bypasses this layer (a skip connection)" in caption
    assert "32 steps" in caption
    at.select_slider(key="gb_ov_layer_steps").set_value(64).run()
    assert "64 steps" in _layer_caption(at)  # more steps do not remove a bypass: still flagged
    assert "⚠" in _layer_caption(at)
    # after layer3 only pooling and the head follow: exact, no flag
    at.selectbox(key="gb_ov_layer").set_value("layer3").run()
    caption = _layer_caption(at)
    assert "⚠" not in caption and "orange" not in caption
    assert float(re.search(r"completeness error ([0-9.e+-]+)", caption).group(1)) < 1e-3
