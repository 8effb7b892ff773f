"""Self-attention's packed q/k/v handed out by unbind in the engine's gradient passes: the same
outputs and gradients, one stacked gradient in place of three zero-filled ones, on this thread only."""
from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from explain.output.packed_attention import unbound_qkv


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


def node_names(out: torch.Tensor) -> set[str]:
    """Names of every autograd node behind ``out``."""
    seen, todo, names = set(), [out.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(n for n, _ in node.next_functions)
    return names


def gradient_pass(encoder, x, mask):
    points = x.clone().requires_grad_(True)  # [B, L, E]
    out = encoder(points, src_key_padding_mask=mask)  # [B, L, E]
    (grad,) = torch.autograd.grad(out[:, 0].sum(), points)
    return out.detach(), grad, node_names(out)


def test_unbind_gives_the_same_outputs_and_gradients_bit_for_bit(encoder):
    x = torch.randn(6, 10, 16)
    mask = torch.zeros(6, 10, dtype=torch.bool)
    mask[:, 7:] = True  # padding keys, as a text model's
    out, grad, names = gradient_pass(encoder, x, mask)
    with unbound_qkv():
        out_u, grad_u, names_u = gradient_pass(encoder, x, mask)
    assert torch.equal(out, out_u) and torch.equal(grad, grad_u)
    assert "SelectBackward0" in names and "UnbindBackward0" not in names  # torch's own: proj[0], [1], [2]
    assert "UnbindBackward0" in names_u and "SelectBackward0" not in names_u
    after = gradient_pass(encoder, x, mask)[2]  # the block closed: torch's own again
    assert "SelectBackward0" in after and "UnbindBackward0" not in after


def test_only_the_thread_inside_the_block_and_only_self_attention_use_it(encoder):
    x = torch.randn(2, 5, 16)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    other: list[set[str]] = []
    with unbound_qkv():
        with unbound_qkv():  # nested blocks: still on after the inner one closes
            pass
        worker = threading.Thread(target=lambda: other.append(gradient_pass(encoder, x, mask)[2]))
        worker.start()
        worker.join()
        inside = gradient_pass(encoder, x, mask)[2]
        attention = nn.MultiheadAttention(16, 4, batch_first=True)
        query = x.clone().requires_grad_(True)
        cross, _ = attention(query, x + 1, x + 1, need_weights=False)  # key is not query: torch's own
    assert "UnbindBackward0" in inside
    assert "UnbindBackward0" not in other[0] and "SelectBackward0" in other[0]
    assert "UnbindBackward0" not in node_names(cross)


def test_a_model_scripted_after_a_block_holds_torchs_own_projection(encoder):
    """The replacement stays installed once a block ran; TorchScript compiles torch's own function in
    its place (it could not compile the replacement), so a scripted model runs and saves as ever."""
    import io
    import zipfile

    import torch.nn.functional as F  # noqa: N812

    with unbound_qkv():
        pass
    assert F._in_projection_packed.__module__ == "explain.output.packed_attention"
    layer = encoder.layers[0]
    scripted = torch.jit.script(layer)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    with zipfile.ZipFile(buf) as archive:
        code = "".join(archive.read(n).decode("utf-8", "replace") for n in archive.namelist() if n.endswith(".py"))
    # no trace of the replacement in what is saved (whether torch's own projection appears by name depends on
    # what TorchScript compiled earlier in the process: in a full test run it was not there)
    assert "explain" not in code and "packed_attention" not in code
    x = torch.randn(2, 5, 16)
    assert torch.equal(scripted(x), layer(x))
