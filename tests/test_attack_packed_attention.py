"""Attack A2 (stop 31) on `explain.output.packed_attention`: a user's own ``nn.MultiheadAttention`` variants
inside the engine's `unbound_qkv` block give the outputs and input gradients of torch's own path (the
attributions are these gradients), and the block leaves nothing behind: not after a raise, not on another
thread running at the same time."""
from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - torch's own name for it
from torch import nn

from explain.output import packed_attention
from explain.output.packed_attention import unbound_qkv

E = 8  # embedding width; inputs [L=5, B=5, E] (L == B: one mask fits batch_first and not)


class _Doubled(nn.MultiheadAttention):
    """A user's subclass overriding forward: attention weights asked for, per head."""

    def forward(self, query, key, value, **kw):
        out, weights = super().forward(query, key, value, need_weights=True, average_attn_weights=False, **kw)
        return out * 2 + weights.mean()


def _cases() -> dict:
    torch.manual_seed(0)
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)  # [L, L] causal
    padding = torch.zeros(5, 5, dtype=torch.bool)
    padding[:, 3:] = True  # [B, L]: the last two keys padded
    cases = {}
    for name, kw in {"plain": {}, "no_bias": {"bias": False}, "bias_kv": {"add_bias_kv": True},
                     "zero_attn": {"add_zero_attn": True}, "batch_first": {"batch_first": True},
                     "bias_kv_zero_attn": {"add_bias_kv": True, "add_zero_attn": True, "bias": False}}.items():
        m = nn.MultiheadAttention(E, 2, **kw).eval()
        cases[name] = lambda x, m=m: m(x, x, x)[0]
        cases[f"{name}/weights"] = lambda x, m=m: m(x, x, x, need_weights=True)[1].sum() + m(x, x, x)[0]
        cases[f"{name}/masks"] = lambda x, m=m: m(x, x, x, attn_mask=mask, key_padding_mask=padding)[0]
        cases[f"{name}/causal"] = lambda x, m=m: m(x, x, x, attn_mask=mask, is_causal=True)[0]
    sub = _Doubled(E, 2).eval()
    cases["subclass"] = lambda x: sub(x, x, x)
    own = nn.MultiheadAttention(E, 2).eval()
    cases["functional"] = lambda x: F.multi_head_attention_forward(  # the user's forward calls torch's function
        x, x, x, E, 2, own.in_proj_weight, own.in_proj_bias, None, None, False, 0.0,
        own.out_proj.weight, own.out_proj.bias, training=False)[0]
    kv = nn.MultiheadAttention(E, 2, kdim=6, vdim=6).eval()  # separate projections: never packed
    cases["kdim_vdim"] = lambda x: kv(x, x[..., :6], x[..., :6])[0]
    hooked = nn.MultiheadAttention(E, 2).eval()
    hooked.register_forward_hook(lambda _m, _a, out: (out[0] * 3, out[1]))
    cases["user_hook"] = lambda x: hooked(x, x, x)[0]
    scripted = torch.jit.script(nn.MultiheadAttention(E, 2).eval())
    cases["torchscript"] = lambda x: scripted(x, x, x)[0]
    cases["unbatched"] = lambda x: own(x[:, 0], x[:, 0], x[:, 0])[0]
    wide = nn.MultiheadAttention(E, 2).double().eval()
    cases["float64"] = lambda x: wide(x.double(), x.double(), x.double())[0]

    def bf16(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return own(x, x, x)[0].float()
    cases["autocast_bf16"] = bf16
    return cases


CASES = _cases()


def _pass(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    points = x.clone().requires_grad_(True)  # [5, 5, E]
    out = fn(points)
    (grad,) = torch.autograd.grad(out.sum(), points)
    return out.detach(), grad


@pytest.mark.parametrize("name", list(CASES))
def test_a_users_attention_variant_gives_torchs_outputs_and_gradients_in_the_block(name):
    x = torch.randn(5, 5, E, generator=torch.Generator().manual_seed(1))
    want, want_grad = _pass(CASES[name], x)
    with unbound_qkv():
        got, got_grad = _pass(CASES[name], x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=1e-6)
    assert packed_attention._DEPTH.blocks == 0


def test_a_pass_that_raises_in_the_block_leaves_the_thread_as_it_was():
    with pytest.raises(RuntimeError, match="cancelled"), unbound_qkv(), unbound_qkv():
        raise RuntimeError("cancelled")
    assert packed_attention._DEPTH.blocks == 0
    x = torch.randn(5, 5, E)
    out = CASES["plain"](x.requires_grad_(True))
    names, todo, seen = set(), [out.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            names.add(type(node).__name__)
            todo.extend(n for n, _ in node.next_functions)
    assert "UnbindBackward0" not in names and "SelectBackward0" in names  # torch's own again


def test_two_threads_at_once_one_in_the_block_one_not_each_get_torchs_numbers():
    x = torch.randn(5, 5, E, generator=torch.Generator().manual_seed(2))
    want = {"a": _pass(CASES["plain/masks"], x), "b": _pass(CASES["bias_kv"], x)}
    both = threading.Barrier(2)
    got: dict = {}

    def run(key: str, case: str, inside: bool) -> None:
        both.wait()
        for _ in range(20):  # interleaved passes
            if inside:
                with unbound_qkv():
                    got[key] = _pass(CASES[case], x)
            else:
                got[key] = _pass(CASES[case], x)
            got[key + "/depth"] = packed_attention._DEPTH.blocks

    threads = [threading.Thread(target=run, args=("a", "plain/masks", True)),
               threading.Thread(target=run, args=("b", "bias_kv", False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for key in "ab":
        for g, w in zip(got[key], want[key]):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-6)
        assert got[key + "/depth"] == 0
