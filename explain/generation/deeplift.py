"""DeepLIFT and DeepLIFT-SHAP of a causal LM's generated tokens, with exact rules on every block.

Each generated token's log-probability (`explain.generation.attribution`) is attributed to the
input embeddings of every earlier position by the rules of `explain.output.aten_rules` /
`explain.output.pair_rules`, run on the decoder captured as an ATen graph (``inputs_embeds``
[B, L, D] -> final-normed hidden states [B, L, D], dynamic batch and length, no KV cache), the
LM head and the log-softmax then run as pairs here. Every rule satisfies summation to delta
(Σ multiplier · Δin = Δout), so per generated token t

    Σ values[t] = log p(token t | x) - log p(token t | reference)      (DeepLIFT)
    Σ values[t] = log p(token t | x) - mean_b log p(token t | b)       (DeepLIFT-SHAP)

up to float error; ``completeness_error`` reports the gap. How each block of a decoder gets its
exact rule (Δ = x - r, m̄ = (x + r) / 2; the captured graph holds these ops, the rule follows):

- RMSNorm (Llama, Mistral, Qwen, Gemma): y = w · h · rsqrt(mean(h²) + ε). h² is elementwise
  (rescale: multiplier (x² - r²)/(x - r) = x + r, exact); mean is linear; rsqrt is elementwise
  (rescale, exact by construction: m · Δs = Δ rsqrt(s)); h · rsqrt(·) is a product of two
  input-dependent factors: the midpoint rule Δ(ab) = Δa · b̄ + ā · Δb, exact for any bilinear
  map (expand (a_r + Δa)(b_r + Δb) - a_r b_r); w · is linear. So Δy = Σ m · Δh exactly.
- LayerNorm (GPT-2): the same with centring (linear) and variance mean(c · c) (product).
- SiLU-gated MLP: down(silu(gate(h)) · up(h)); gate / up / down are linear, silu rescale, the
  gating product the midpoint rule above. GPT-2's GELU (tanh form: 0.5 · x · (1 + tanh(k(x +
  0.044715 x³)))) is pow and tanh (rescale) and a product of x with (1 + tanh(..)) (midpoint).
- Rotary embeddings: q · cos + rotate_half(q) · sin, cos / sin computed from the positions
  only (no input dependence), so linear in q: the gradient is exact.
- Grouped-query attention: repeating the key / value heads (expand + reshape or ``enable_gqa``)
  is linear; q kᵀ and attention · v are products (midpoint rule, exact).
- Causal mask and softmax: the mask does not change between the sides (built from the
  length), so it is a constant gate; softmax runs in the log domain, exp(s - k - log Σ exp(s - k))
  · gate with a shift k shared by both sides: rescale (exp), product (· gate), linear (Σ),
  rescale (log), linear, rescale (exp), product -- each exact, so the chain is.
- Head: linear (and Gemma 2's soft-capping tanh: rescale); log-softmax over the vocabulary as
  above. Picking the target column is linear.

Row t of a text is paired with its reference at positions 0 .. P + t - 1 and with itself after
(Δ = 0 there; the causal mask keeps those positions out of its prediction anyway). The (token x
reference) rows go token-major through `explain.output.engine.Engine.map_chunks` (largest
chunks that fit, halved on out of memory), each chunk cut to the prefix its rows read. The
graph's log-probabilities are checked against the model's own; a graph that does not reproduce
them is refused, never explained.
"""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from explain.errors import IncompatibleInput, one_line
from explain.generation.causal_lm import device_of, is_exported, max_positions, special_ids, target_logprob_grid
from explain.generation.reference import reference_embeddings
from explain.generation.result import GeneratedText, GenerationAttribution, chunk_note
from explain.output import pair_rules as pr
from explain.output.aten_graph import GRAPH_CACHE, CapturedGraph, first_tensor
from explain.output.aten_rules import RULE_FLAVOURS, RulePlan, plan_rules
from explain.output.engine import Engine
from explain.output.pair_interpreter import PairInterpreter

#: deep_shap's background besides pad and unk: this many token sequences drawn at random.
RANDOM_REFERENCES = 4
RANDOM_SEED = 0
#: the rules' flavour (SHAP's eps: the local gradient where |Δ| < 1e-6; no softmax head here).
FLAVOUR = "shap"
EPS = RULE_FLAVOURS[FLAVOUR].rescale_eps


class _Decoder(nn.Module):
    """inputs_embeds [B, L, D] -> the decoder's final-normed hidden states [B, L, D]."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.decoder = lm.get_decoder()

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.decoder(inputs_embeds=embeds, use_cache=False).last_hidden_state


def decoder_graph(lm: nn.Module, dim: int) -> CapturedGraph:
    """The decoder as a functional ATen graph over [batch, length, D] embeddings (cached per model); a ``.pt2``'s:
    its own program from the embedding lookup on (`exported_graph`)."""
    if is_exported(lm):
        return exported_graph(lm)
    device, dtype = device_of(lm), lm.get_input_embeddings().weight.dtype
    key = (id(lm), "causal_lm_decoder", str(device), str(dtype), dim)
    found = GRAPH_CACHE.get_keyed(key, lm)
    if found is not None:
        return found
    limit = max_positions(lm)
    length = torch.export.Dim("length", min=2, max=limit) if limit and limit > 2 else torch.export.Dim("length", min=2)
    example = torch.zeros(2, 3, dim, dtype=dtype, device=device)  # [2, 3, D]: neither dim specialised
    try:
        ep = torch.export.export(_Decoder(lm), (example,),
                                 dynamic_shapes=({0: torch.export.Dim("batch"), 1: length},))
        module = ep.run_decompositions({}).module() if _mutates(ep) else ep.module()
    except Exception as exc:  # noqa: BLE001 - any export failure: say so in one line
        raise IncompatibleInput(
            f"Cannot capture this causal LM's decoder as a graph for DeepLIFT ({one_line(exc, 200)}).",
            "Use integrated_gradients instead.") from None
    captured = CapturedGraph(module, "torch.export of the decoder (dynamic batch and length)")
    GRAPH_CACHE.put_keyed(key, lm, captured)
    return captured


def exported_graph(lm: Any) -> CapturedGraph:
    """A ``.pt2`` causal LM's program from its embedding lookup on (`explain.loading.export_lm.embedding_graph`):
    embeddings [B, L, D] -> logits [B, L, V], the head and final norm inside (`head_pair` then adds nothing).

    Raises:
        IncompatibleInput: a program of a static batch or length, or one taking a mask (the pairs run at any
            batch and length, embeddings alone).
    """
    sig = lm.signature
    if sig.mask or sig.static_length or sig.static_batch:
        raise IncompatibleInput("DeepLIFT runs a .pt2 causal LM's program on (explained, reference) pairs of any batch "
                                "and length; this one takes a fixed batch or length, or an attention mask.",
                                "Use integrated_gradients instead.")
    return CapturedGraph(lm.from_embeds, "the .pt2 program from its embedding lookup on")


def _mutates(ep: Any) -> bool:
    return any(getattr(n.target, "_schema", None) is not None and any(
        a.alias_info is not None and a.alias_info.is_write for a in n.target._schema.arguments)
        for n in ep.graph.nodes if n.op == "call_function")


def shap_references(lm: nn.Module, model: Any, x: torch.Tensor) -> tuple[torch.Tensor, str]:
    """deep_shap's background for embeddings ``x`` [L, D]: [B, L, D] and its description.

    The pad token's embedding at every position, the unknown token's (where the tokenizer has
    one), and `RANDOM_REFERENCES` sequences of tokens drawn uniformly from the vocabulary with
    seed `RANDOM_SEED` (the same for every text of this length).
    """
    rows = [reference_embeddings(lm, model, x, "pad")]
    names = ["pad"]
    if special_ids(lm, model)["unk"] is not None:
        rows.append(reference_embeddings(lm, model, x, "unk"))
        names.append("unk")
    table = lm.get_input_embeddings()
    generator = torch.Generator().manual_seed(RANDOM_SEED)
    ids = torch.randint(0, int(table.weight.shape[0]), (RANDOM_REFERENCES, x.shape[0]), generator=generator)
    with torch.no_grad():
        rows.extend(table(ids.to(x.device)).to(x.dtype))  # [R, L, D]
    names.append(f"{RANDOM_REFERENCES} random token sequences (seed {RANDOM_SEED})")
    return torch.stack(rows), ", ".join(names)


def head_pair(lm: nn.Module, hidden: pr.Pair) -> pr.Pair:
    """Logits [S, V] of final-normed hidden-state pairs [S, D] (`causal_lm.head_logits` as pairs); a ``.pt2``'s
    graph ends in its logits already (`exported_graph`)."""
    if is_exported(lm):
        return hidden
    logits = pr.linear(lm.get_output_embeddings(), hidden)  # affine: the gradient is exact
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if isinstance(cap, (int, float)) and cap > 0:
        capped = pr.rescale(pr.linear(lambda t: t / cap, logits), torch.tanh, EPS)
        logits = pr.linear(lambda t: t * cap, capped)
    return logits


def pair_logprobs(module: nn.Module, plan: RulePlan, lm: nn.Module, xs: torch.Tensor, rs: torch.Tensor,
                  positions: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, PairInterpreter]:
    """log p(targets | xs) [S] (carrying multipliers back to the interpreter's leaf) and on rs [S].

    xs, rs [S, L, D] explained and reference embeddings; positions [S] where each row predicts,
    targets [S] the ids predicted there.
    """
    pairs = PairInterpreter(module, plan, xs.shape[0])
    hx = first_tensor(pairs.run(xs, rs))  # [S, L, D]
    hr = first_tensor(pairs.ref_output).detach()
    rows = torch.arange(xs.shape[0], device=xs.device)
    hidden = pr.linear(lambda h: h[rows, positions].float(), (hx, hr))  # [S, D]
    logp = pr.log_softmax(head_pair(lm, hidden), -1, EPS)  # [S, V]
    picked = pr.linear(lambda v: v.gather(1, targets[:, None])[:, 0], logp)  # [S]
    return picked[0], picked[1].detach(), pairs


def attribute_rules(lm: nn.Module, model: Any, text: GeneratedText, method: str, baseline: str,
                    engine: Engine, advance) -> GenerationAttribution:
    """One text's DeepLIFT (``baseline``'s reference) or DeepLIFT-SHAP (`shap_references`) values."""
    began = time.perf_counter()
    dtype = lm.get_input_embeddings().weight.dtype
    if dtype != torch.float32:  # the pair rules' multipliers need float32's precision to add up
        name = str(dtype).removeprefix("torch.")
        raise IncompatibleInput(f"{method} runs its exact rules in float32; this model's weights are {name}.",
                                "Use integrated_gradients, or save the model in float32.")
    device = device_of(lm)
    seq = torch.as_tensor(text.input_ids, device=device)  # [P + T]
    p, t_count = len(text.prompt_ids), len(text.generated_ids)
    length = p + t_count - 1  # the last generated token is never an input
    with torch.no_grad():
        x = lm.get_input_embeddings()(seq[:length]).float()  # [L, D]
    if method == "deeplift":
        refs, params = reference_embeddings(lm, model, x, baseline)[None], {"baseline": baseline}  # [1, L, D]
    else:
        refs, described = shap_references(lm, model, x)  # [B, L, D]
        params = {"background": described}
    refs = refs.float()
    b_count, dim = refs.shape[0], x.shape[1]
    captured = decoder_graph(lm, dim)
    plan = plan_rules(captured.module.graph, False, FLAVOUR)
    if plan.unruled:
        raise IncompatibleInput(f"No exact DeepLIFT rule for {', '.join(plan.unruled)} in this decoder.",
                                "Use integrated_gradients instead.")
    targets = seq[p:]  # [T]
    acc = torch.zeros(t_count, length, dtype=torch.float64, device=device)  # [T, L] mean over references
    graph_logp = torch.zeros(t_count, dtype=torch.float64, device=device)  # [T] log p(token | x), the graph's
    base_logp = torch.zeros(t_count, dtype=torch.float64, device=device)  # [T] mean over references
    layers = int(getattr(lm.config, "num_hidden_layers", 0) or getattr(lm.config, "n_layer", 0) or 12)

    def work(lo: int, hi: int) -> None:
        r = torch.arange(lo, hi, device=device)
        tok, b = r // b_count, r % b_count  # token-major
        cut = max(2, p + int(tok.max()))  # positions the chunk's rows read (the graph wants >= 2)
        xs = _padded(x, cut)[None].expand(len(r), cut, dim)  # [S, cut, D]
        rs = torch.stack([_padded(refs[i], cut) for i in b.tolist()])  # [S, cut, D]
        own = torch.arange(cut, device=device)[None] < (p + tok)[:, None]  # [S, cut] positions row reads
        rs = torch.where(own[..., None], rs, xs)  # Δ = 0 after the row's prefix
        with torch.enable_grad():
            logp, logp_r, pairs = pair_logprobs(captured.module, plan, lm, xs, rs,
                                                p + tok - 1, targets[tok])
            (grad,) = torch.autograd.grad(logp.sum(), pairs.attribution_leaf)  # [S, cut, D] multipliers
        values = (grad * (pairs.attribution_leaf.detach() - pairs.attribution_ref)).sum(-1) * own  # [S, cut]
        width = min(cut, length)
        acc[:, :width].index_add_(0, tok, values[:, :width].double() / b_count)
        graph_logp.index_add_(0, tok, logp.detach().double() / b_count)
        base_logp.index_add_(0, tok, logp_r.double() / b_count)
        advance(hi // b_count - lo // b_count)  # tokens done

    row_bytes = length * dim * 4 * (8 + 48 * layers)  # both sides' activations and saved midpoints, roughly
    engine.map_chunks(t_count * b_count, work, row_bytes, report=False)
    with torch.no_grad():
        logprobs = target_logprob_grid(lm, x[None], p + torch.arange(t_count, device=device) - 1, targets)[0]  # [T]
    _check_agreement(graph_logp, logprobs.double())
    error = (acc.sum(-1) - (graph_logp - base_logp)).abs()  # [T]
    full = torch.zeros(t_count, p + t_count, device=device)
    full[:, :length] = acc.float()
    notes = [f"graph captured by {captured.how}", *chunk_note(engine.chunk_sizes)]
    return GenerationAttribution(
        text.input_ids, p, full.cpu().numpy(), logprobs.float().cpu().numpy(), base_logp.float().cpu().numpy(),
        error.float().cpu().numpy(), method, params, time.perf_counter() - began, notes + list(engine.notes))


def _padded(e: torch.Tensor, cut: int) -> torch.Tensor:
    """Embeddings [L, D] cut (or zero-padded) to ``cut`` positions: [cut, D]."""
    if e.shape[0] >= cut:
        return e[:cut]
    return torch.cat([e, e.new_zeros(cut - e.shape[0], e.shape[1])])


def _check_agreement(graph: torch.Tensor, own: torch.Tensor) -> None:
    gap = float((graph.cpu() - own.cpu()).abs().max()) if graph.numel() else 0.0
    if not gap <= 1e-3 * (1.0 + float(own.abs().max())):
        raise IncompatibleInput(
            f"The decoder's captured graph does not reproduce this model's log-probabilities (difference {gap:.3g}).",
            "Use integrated_gradients instead.")
