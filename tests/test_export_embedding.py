"""One finder of a ``.pt2``'s token-embedding lookup (`explain.loading.export_lm.embedding_lookup`) for both
paths: the classifier path (`explain.output.model_function.ModelFunction`) and the causal LM path
(`explain.loading.export_lm.embedding_graph`). Known answers: the eager model the program was exported from."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from explain import InputSpec, LoadedModel
from explain.errors import IncompatibleInput
from explain.loading.export_lm import NO_EMBEDDING, ExportedCausalLM, embedding_lookup, lm_signature
from explain.output.methods import get_method
from explain.output.model_function import ModelFunction, graph_embedding, text_incompatibility

V, D, P, L = 11, 4, 40, 6  # vocabulary, width, a position table larger than the vocabulary, length
IDS = torch.tensor([[3, 7, 1, 9, 0, 0], [5, 2, 10, 4, 8, 6]])  # [2, L]


class Tagger(nn.Module):
    """ids [N, L] -> logits [N, L, V] (or [N, K] pooled): GPT-2's ``ids.view(-1, L)`` after a user's
    ``ids.long()``, learned positions in a table of P > V rows (the largest ``aten.embedding`` table);
    ``ids`` optionally also feed a padding mask, or are clamped before the lookup."""

    def __init__(self, use: str = "plain", classes: int = 0):
        super().__init__()
        torch.manual_seed(0)
        self.use = use
        self.tok = nn.Embedding(V, D)
        self.pos = nn.Parameter(torch.randn(P, D))  # [P, D], looked up with aten.embedding too
        self.head = nn.Linear(D, classes or V)
        self.classes = classes

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # [N, L] int64
        length = ids.shape[1]
        at = ids.clamp(min=0) if self.use == "clamped" else ids.long().view(-1, length)  # [N, L]
        if self.use == "positions_first":  # the position lookup (indices from the ids' size) comes first in the graph
            x = nn.functional.embedding(torch.arange(length), self.pos) + self.tok(at)  # [N, L, D]
        else:
            x = self.tok(at) + nn.functional.embedding(torch.arange(length), self.pos)  # [N, L, D]
        if self.use == "masked":
            x = x * (ids != 0).unsqueeze(-1)  # the ids feed a mask besides the lookup
        x = torch.tanh(x)
        return self.head(x.mean(1) if self.classes else x)  # [N, K] or [N, L, V]


def exported(module: nn.Module) -> tuple[torch.export.ExportedProgram, torch.fx.GraphModule]:
    dims = ({0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("length", min=2, max=16)},)
    ep = torch.export.export(module.eval(), (IDS,), dynamic_shapes=dims)
    return ep, ep.module()


def loaded(module: nn.Module, fmt: str, classes: int = 0) -> LoadedModel:
    spec = InputSpec(modality="text", input_shape=(L,), vocabulary=[f"w{i}" for i in range(V)],
                     class_names=[f"c{k}" for k in range(classes)])
    return LoadedModel(module=module, format=fmt, sha256=fmt, spec=spec)


@pytest.fixture(scope="module")
def causal():
    model = Tagger()
    ep, gm = exported(model)
    return model, ep, gm


def test_the_classifier_path_and_the_lm_path_find_the_same_lookup(causal):
    """On a GPT-2-like program (ids cast and viewed, then looked up; positions in a table larger than the
    vocabulary, which the classifier path's old rule, 'the largest table', took), both paths take the token
    lookup: the classifier's start points are the token table's rows of the ids, and the LM's program of
    embeddings gives the program's logits on them."""
    model, ep, gm = causal
    found = embedding_lookup(gm)
    assert found is not None and found.weight_name == "tok.weight" and found.alone
    assert gm.pos.shape[0] > found.weight.shape[0]  # the table the old rule chose
    function = ModelFunction(loaded(gm, "export"), IDS)
    assert function._node is found.node and graph_embedding(loaded(gm, "export")).node is found.node
    want = model.tok.weight[IDS].detach()  # [2, L, D]
    torch.testing.assert_close(function.start_points(), want, atol=0, rtol=0)
    lm = ExportedCausalLM(gm, lm_signature(ep))
    assert lm.get_input_embeddings().weight is found.weight
    with torch.no_grad():
        torch.testing.assert_close(lm(inputs_embeds=want).logits, model(IDS), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(lm(input_ids=IDS).logits, model(IDS), atol=1e-6, rtol=1e-6)


def test_ids_that_also_feed_a_mask_keep_the_classifier_path_and_refuse_the_lm_path():
    """The stricter rule is the LM path's alone (a program of embeddings alone, for DeepLIFT): ids feeding a
    padding mask too still give the classifier path its lookup, and the LM path its one-line refusal."""
    ep, gm = exported(Tagger("masked"))
    found = embedding_lookup(gm)
    assert found is not None and found.weight_name == "tok.weight" and not found.alone
    assert ModelFunction(loaded(gm, "export"), IDS)._node is found.node
    lm = ExportedCausalLM(gm, lm_signature(ep))
    with pytest.raises(IncompatibleInput) as caught:
        lm.get_input_embeddings()
    assert str(caught.value).startswith(NO_EMBEDDING) and "\n" not in str(caught.value)


def test_ids_changed_by_value_before_the_lookup_have_no_token_lookup_on_either_path():
    """``ids.clamp(min=0)`` before the lookup: neither path takes a lookup of other indices (the position
    table, nor the clamped ids), and the classifier path says why in one line."""
    ep, gm = exported(Tagger("clamped"))
    assert embedding_lookup(gm) is None and ExportedCausalLM(gm, lm_signature(ep)).from_embeds is None
    model = loaded(gm, "export")
    assert graph_embedding(model) is None
    reason = text_incompatibility(model)
    assert reason.startswith("Gradient methods need the token-embedding layer") and "\n" not in reason
    with pytest.raises(IncompatibleInput, match="token-embedding layer"):
        ModelFunction(model, IDS)


def test_an_exported_classifier_with_a_larger_position_table_equals_its_eager_ig():
    """Integrated gradients of the exported classifier (masked ids, positions in the largest table) at its token
    lookup = the eager model's at its one ``nn.Embedding``."""
    eager = Tagger("masked", classes=3)
    _ep, gm = exported(eager)
    ig = get_method("integrated_gradients")
    kw = {"steps": 8, "precision": "fp32", "tolerance": 0.0, "use_cache": False}
    want = ig.explain(loaded(eager, "safetensors", 3), IDS.numpy(), target=1, **kw)
    got = ig.explain(loaded(gm, "export", 3), IDS.numpy(), target=1, **kw)
    assert np.abs(want.values).max() > 1e-3
    np.testing.assert_allclose(got.values, want.values, atol=1e-5 * np.abs(want.values).max(), rtol=0)


def test_deeplift_takes_the_token_lookup_of_the_one_finder():
    """DeepLIFT's rule plan (`explain.output.aten_rules.plan_rules`) attributes at `embedding_lookup`'s node, not at
    the first lookup the ids reach (here the position table, whose indices come from the ids' size). Known
    answer: out_t = sum_d W[t, d] mean_l tanh(x[l, d]) + b, so the rescale rule gives token l
    sum_d W[t, d] / L (tanh(x[l, d]) - tanh(r[l, d])), x and r the token plus position embeddings of ids and
    reference; ids changed by value before the lookup are refused in one line, as the gradient methods do."""
    from explain.output.aten_rules import plan_rules

    eager = Tagger("positions_first", classes=3)
    _ep, gm = exported(eager)
    found = embedding_lookup(gm)
    assert found is not None and found.weight_name == "tok.weight"
    assert plan_rules(gm.graph, True).attribution_node is found.node
    ref = torch.zeros_like(IDS)  # [2, L]
    kw = {"baseline": "file", "baseline_array": ref.numpy(), "use_cache": False}
    got = get_method("deeplift").explain(loaded(gm, "export", 3), IDS.numpy(), target=2, **kw)
    with torch.no_grad():
        pos = eager.pos[:L]  # [L, D]
        delta = torch.tanh(eager.tok.weight[IDS] + pos) - torch.tanh(eager.tok.weight[ref] + pos)  # [2, L, D]
        want = (delta * eager.head.weight[2] / L).sum(-1)  # [2, L]
    assert want.abs().max() > 1e-2
    np.testing.assert_allclose(got.values, want.numpy(), atol=1e-6, rtol=0)
    _ep, clamped = exported(Tagger("clamped", classes=3))
    with pytest.raises(IncompatibleInput, match="no embedding lookup on its token ids") as caught:
        plan_rules(clamped.graph, True)
    assert "\n" not in str(caught.value)
