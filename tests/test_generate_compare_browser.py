"""The two newest flows in a real browser, as a person sees them (issues 22 and 24).

- Generate: picking the causal-LM sample in the sidebar opens the Generate page already explained
  (the key's colour generated, the attribution matrix, the quality table, the selected step's
  attention and logit lens), with no click on Generate.
- A user's own ``.pt2`` causal LM (token ids -> logits, ``torch.export``ed) uploaded with its ``tokenizer.json``
  (built with ``tokenizers``) in the Spec slot: before the tokenizer comes, one line asks for it; once it is
  there that line is gone and the Generate page generates and draws the attribution matrix.
- Compare: ``/compare?a=cancer@v1&b=cancer@v1`` (a version against itself) runs the comparison as a
  job and shows agreement 100 % with nothing flipped.
"""
from __future__ import annotations

import pytest

from tests.conftest import SCREENSHOTS, choose_option, open_upload_mode, wait_for_app, wait_for_page_body

pytestmark = pytest.mark.browser


def _no_exception(page) -> None:
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, exceptions.first.inner_text()[:800]


def test_the_causal_lm_sample_opens_the_generate_page_already_explained(app_url, browser_page):
    page = browser_page
    page.goto(app_url + "/generate")
    page.locator('[data-testid="stMain"] h1', has_text="Generate").wait_for(timeout=240_000)
    sidebar = page.locator('[data-testid="stSidebar"]')
    choose_option(page, sidebar.locator('[data-testid="stSelectbox"]', has_text="Sample"),
            "Key copy — causal LM (Generate page)")
    main = page.locator('[data-testid="stMain"]')
    main.get_by_text("Selected step: attention and logit lens").wait_for(timeout=240_000)
    main.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
    wait_for_page_body(page, "Generate")
    _no_exception(page)
    text = main.inner_text()
    assert "blue" in text and "Quality of the attribution" in text, text[:2000]
    assert main.locator(".js-plotly-plot").count() >= 2  # the matrix and the selected step's attention
    assert main.get_by_role("button", name="Generate and explain").is_enabled()
    page.screenshot(path=str(SCREENSHOTS / "generate_keycopy.png"), full_page=True)
    main.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "generate_keycopy_matrix.png"))
    main.locator(".js-plotly-plot").nth(1).scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "generate_keycopy_step.png"))


def _user_pt2_lm(root) -> tuple:
    """A tiny causal LM (an embedding's running sum through a head: ids [N, L] -> logits [N, L, 12]) exported for
    batch 1..8 and length 1..24 as ``my-lm.pt2`` (no tokenizer inside) and its word-level ``tokenizer.json``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers

    class TinyLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb, self.head = torch.nn.Embedding(12, 8), torch.nn.Linear(8, 12)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(torch.tanh(self.emb(ids).cumsum(1)))  # [N, L, V]

    words = ["<unk>", "</s>", "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    dims = ({0: torch.export.Dim("batch", max=8), 1: torch.export.Dim("length", min=1, max=24)},)
    program = torch.export.export(TinyLM().eval(), (torch.ones(2, 5, dtype=torch.long),), dynamic_shapes=dims)
    torch.export.save(program, root / "my-lm.pt2")
    (root / "tokenizer.json").write_text(tok.to_str())
    return root / "my-lm.pt2", root / "tokenizer.json"


def test_a_users_pt2_lm_with_its_tokenizer_json_as_the_spec_generates_and_attributes(app_url, browser_page, tmp_path):
    page = browser_page
    lm, tokenizer = _user_pt2_lm(tmp_path)
    sidebar, uploader = open_upload_mode(page, app_url)
    main = page.locator('[data-testid="stMain"]')
    uploader.filter(has_text="Checkpoint").locator('input[type="file"]').set_input_files(str(lm))
    asks = page.get_by_text("comes with no tokenizer", exact=False)
    asks.first.wait_for(timeout=240_000)  # the .pt2 alone: one line asks for its tokenizer
    uploader.filter(has_text="Spec").locator('input[type="file"]').set_input_files(str(tokenizer))
    sidebar.get_by_text("tokenizer.json").first.wait_for(timeout=120_000)
    wait_for_app(page, 240_000)
    sidebar.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Generate", exact=True).click()
    page.locator('[data-testid="stMain"] h1', has_text="Generate").wait_for(timeout=240_000)
    wait_for_page_body(page, "Generate")
    # the refusal goes with the tokenizer's upload, the person doing nothing more (on a loaded machine the page's
    # last run may still be drawing when the title shows: wait for it to be gone rather than read it once)
    asks.first.wait_for(state="detached", timeout=120_000)
    _no_exception(page)
    main.get_by_label("Prompt").fill("the cat sat on")
    main.get_by_role("spinbutton", name="Max new tokens").fill("4")
    main.get_by_role("spinbutton", name="Max new tokens").press("Enter")
    wait_for_app(page, 240_000)
    main.get_by_role("button", name="Generate and explain").click()
    main.get_by_text("Generated text").wait_for(timeout=240_000)
    main.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
    wait_for_app(page, 240_000)
    _no_exception(page)
    text = main.inner_text()
    assert "Greedy continuation: 4 tokens after a prompt of 4" in text, text[:3000]
    assert "Completeness error per token" in text and asks.count() == 0, text[:3000]
    page.screenshot(path=str(SCREENSHOTS / "generate_user_pt2.png"), full_page=True)
    main.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "generate_user_pt2_matrix.png"))


def test_a_version_compared_with_itself_agrees_everywhere(app_url, browser_page):
    page = browser_page
    page.goto(app_url + "/compare?a=cancer%40v1&b=cancer%40v1")
    page.locator('[data-testid="stMain"] h1', has_text="Compare versions").wait_for(timeout=240_000)
    wait_for_page_body(page, "Compare versions")
    main = page.locator('[data-testid="stMain"]')
    main.get_by_role("button", name="Compare").click()
    main.get_by_text("Structure").first.wait_for(timeout=240_000)
    main.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
    wait_for_app(page, 240_000)
    _no_exception(page)
    text = main.inner_text()
    assert "100" in text and "flipped" in text.lower(), text[:3000]
    page.screenshot(path=str(SCREENSHOTS / "compare_self.png"), full_page=True)
    main.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "compare_self_figures.png"))
