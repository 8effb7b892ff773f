"""Eval-mode batch norms folded into the convolutions before them, for forward-only passes.

An eval-mode ``BatchNorm`` after a convolution is an affine map per channel,
``(conv(x) - mean) * gamma / sqrt(var + eps) + beta``, so one convolution with weights
``w * scale`` and bias ``(b - mean) * scale + beta`` computes the pair
(`torch.nn.utils.fusion.fuse_conv_bn_eval`): the same values up to float rounding and
one pass over the activations fewer. The quality metrics' grids (deletion, insertion,
...) on a CPU ResNet run ~1.2x faster that way (its batch norms took ~10-15 % of the
forward pass). The copy's 2-d convolutions also keep their weights reordered once into
oneDNN's own layout (`_PackedConv2d`), which eager ``conv2d`` redoes on every call.

Only where it is certain: a plain ``nn.Module`` held here (`LoadedModel.is_eager`,
float32, on a CPU), pairs seen in one forward pass of a throwaway copy with hooks of
its own (the norm is given the very tensor the convolution returned, unmodified since;
each module runs once), and the folded copy's logits on those rows equal to the
model's up to rounding (so a convolution output also read elsewhere, which the hooks
cannot see, leaves the model as it is). No ``torch.fx`` trace: it patches
``nn.Module.__call__`` for the whole process while it runs, under the forward passes of
the worker threads beside it. The folded copy shares every other parameter and buffer
with the model, which is never changed.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import threading
import weakref

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from explain.model import LoadedModel

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: the folded copy's logits may differ from the model's by this share of their largest magnitude.
RTOL = 1e-4
#: models whose folded copies (or None: nothing to fold) are kept, most recent last.
KEPT = 2
_KEPT: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module | None]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def folded_model(model: LoadedModel, probe: torch.Tensor) -> LoadedModel:
    """A copy of ``model`` (for forward passes only) with each Conv -> BatchNorm pair one
    convolution, or ``model`` itself when it has none or the copy's logits differ.

    The copies of the last `KEPT` models are kept (each metric of each method folds the same
    model) while the model's tensors, submodules, modes and hooks stay the same (`_stamp`).

    Args:
        probe: a model-ready input or two [B, ...]: the pairs are found and the copy checked on them.
    """
    module = model.module
    if not (model.is_eager and model.device.type == "cpu" and model.graph_dtype is None
            and any(_foldable_norm(m) for m in module.modules())
            and any(type(m) in _CONVS for m in module.modules())):
        return model
    stamp = _stamp(module)
    with _LOCK:
        kept = _KEPT.get(module)
    if kept is not None and kept[0] == stamp:
        shell = kept[1]
    else:
        shell = _fold(module, probe)
        with _LOCK:
            _KEPT.pop(module, None)
            _KEPT[module] = (stamp, shell)
            while len(_KEPT) > KEPT:
                del _KEPT[next(iter(_KEPT))]
    return model if shell is None else dataclasses.replace(model, module=shell)


def _fold(module: nn.Module, probe: torch.Tensor) -> nn.Module | None:
    """The folded copy of ``module``, or None when it has no pair or the copy's logits differ."""
    shell = _shell(module)
    with torch.no_grad():
        pairs, want = _pairs(shell, probe)
        if not pairs:
            return None
        for conv_name, norm_name in pairs:
            conv, norm = shell.get_submodule(conv_name), shell.get_submodule(norm_name)
            # the shell's own parameter dict: the model's convolution keeps its weights
            conv._parameters["weight"], conv._parameters["bias"] = fuse_conv_bn_weights(
                conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias)
            parent, _, leaf = norm_name.rpartition(".")
            shell.get_submodule(parent)._modules[leaf] = nn.Identity()
        _pack_convolutions(shell)
        got = shell(probe)
    return shell if _close(got, want) else None


class _PackedConv2d(nn.Conv2d):
    """A folded copy's ``nn.Conv2d`` whose weight was reordered once into the blocked layout oneDNN
    computes in (``mkldnn._reorder_convolution_weight``, as ``torch.compile``'s CPU convolutions
    keep theirs): eager ``conv2d`` reorders it on every call. The same oneDNN convolution, so the
    same values (the copy is checked against the model all the same); 6-11 % less CPU time a
    forward pass of the Q1 ResNet at 64² (40 rows, 1 thread, 2-core shared CPU, load 9). A channels-last
    float32 batch (`explain.output.model_function.Layout`) with gradients off only: the op has no backward, and
    it returns a channels-last output for a contiguous batch too, where ``.view`` after a convolution
    fails; anything else runs the convolution as the model's does.

    ``_packed`` [reordered weight] and ``_geometry`` (padding, stride, dilation, groups) are the
    copy's own (`_pack_convolutions`): a change of the model's weight makes a new copy (`_stamp`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, C', H', W']
        if (x.dim() == 4 and x.dtype == torch.float32 and not torch.is_grad_enabled()
                and x.is_contiguous(memory_format=torch.channels_last)):
            return torch.ops.mkldnn._convolution_pointwise(x, self._packed, self.bias, *self._geometry, "none", [], "")
        return super().forward(x)


def _pack_convolutions(shell: nn.Module) -> None:
    """Each plain float32 ``nn.Conv2d`` of the copy (zero padding given as numbers) made a
    `_PackedConv2d`; left as it is where oneDNN is off or cannot reorder its weight."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):
        return
    for m in shell.modules():
        if not (type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str)
                and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu" and _plain(m)):
            continue
        geometry = (list(m.padding), list(m.stride), list(m.dilation), m.groups)
        try:
            packed = torch.ops.mkldnn._reorder_convolution_weight(m.weight.detach(), *geometry)
        except RuntimeError:
            continue
        m.__class__ = _PackedConv2d
        m._packed, m._geometry = packed, geometry


def _stamp(module: nn.Module) -> tuple:
    """What a folded copy depends on: each tensor's identity, storage and version (in-place
    changes, ``load_state_dict``, a move), each submodule's identity, mode and hooks."""
    tensors = tuple((id(t), t.data_ptr(), t._version) for t in itertools.chain(module.parameters(), module.buffers()))
    modules = tuple((id(m), m.training, len(m._forward_hooks), len(m._forward_pre_hooks)) for m in module.modules())
    return tensors, modules


def _pairs(shell: nn.Module, probe: torch.Tensor) -> tuple[list[tuple[str, str]], torch.Tensor]:
    """(convolution, batch norm) qualified names where the norm is given the convolution's output
    as it returned it, each called once in a forward pass of ``probe``; and that pass's output.
    The hooks go on ``shell`` (a `_shell` of the model: the model's forward passes elsewhere see none)."""
    calls: collections.Counter[str] = collections.Counter()
    returned: dict[int, tuple[str, torch.Tensor, int]] = {}  # id(output) -> (conv, output, its version)
    found: list[tuple[str, str]] = []
    reads = _Reads(returned)

    def conv_hook(name):
        def hook(_module, _inputs, out):
            with reads.paused():
                calls[name] += 1
                if isinstance(out, torch.Tensor):
                    returned[id(out)] = (name, out, out._version)
        return hook

    def norm_hook(name):
        def hook(_module, inputs):
            reads.pause += 1  # until the norm returns (`_resume`): its own forward reads the output
            calls[name] += 1
            seen = returned.get(id(inputs[0])) if len(inputs) == 1 else None
            if seen is not None and seen[1] is inputs[0] and inputs[0]._version == seen[2]:
                found.append((seen[0], name))
        return hook

    def _resume(_module, _inputs, _out):
        reads.pause -= 1

    with contextlib.ExitStack() as hooks:
        for name, m in shell.named_modules():
            if type(m) in _CONVS and not m.training and m.weight.dtype == torch.float32 and _plain(m):
                hooks.enter_context(m.register_forward_hook(conv_hook(name)))
            elif _foldable_norm(m):
                hooks.enter_context(m.register_forward_pre_hook(norm_hook(name)))
                hooks.enter_context(m.register_forward_hook(_resume))
        with reads:
            out = shell(probe)
    pairs = [(c, b) for c, b in found if calls[c] == calls[b] == 1 and c not in reads.read
             and shell.get_submodule(c).out_channels == shell.get_submodule(b).num_features]
    return pairs, out


class _Reads(TorchFunctionMode):
    """The convolutions (names) whose output a torch function was given outside a batch norm's own
    forward pass: read beyond the norm (``bn(y) + y``, ``relu(y - 50)``), so the pair may not fold,
    however small the difference on the rows checked. A mode of this thread alone (not a patch of
    ``nn.Module.__call__``); only ops the probe's pass runs are seen."""

    def __init__(self, returned: dict[int, tuple[str, torch.Tensor, int]]):
        super().__init__()
        self.returned, self.read, self.pause = returned, set(), 0

    @contextlib.contextmanager
    def paused(self):
        self.pause += 1
        try:
            yield
        finally:
            self.pause -= 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if not self.pause:
            for leaf in pytree.tree_leaves((args, kwargs)):
                seen = self.returned.get(id(leaf)) if isinstance(leaf, torch.Tensor) else None
                if seen is not None and seen[1] is leaf:
                    self.read.add(seen[0])
        return func(*args, **(kwargs or {}))


def _foldable_norm(m: nn.Module) -> bool:
    """An eval-mode batch norm with float32 running statistics."""
    return (isinstance(m, _BatchNorm) and not m.training and m.track_running_stats
            and m.running_mean is not None and m.running_var is not None
            and m.running_mean.dtype == torch.float32 and _plain(m))


def _plain(m: nn.Module) -> bool:
    """No hooks of the model's (they would see folded values) and no parametrisation (weight norm)."""
    return not (m._forward_hooks or m._forward_pre_hooks or parametrize.is_parametrized(m))


def _close(got, want) -> bool:
    if not (isinstance(got, torch.Tensor) and isinstance(want, torch.Tensor)) or got.shape != want.shape:
        return False
    if not want.numel():
        return True
    scale = max(float(want.abs().max()), 1e-6)
    return bool(torch.isfinite(got).all()) and float((got - want).abs().max()) <= RTOL * scale


def _shell(module: nn.Module) -> nn.Module:
    """A copy of the module tree sharing every parameter and buffer, with dicts of its own
    (submodules, parameters, hooks): changing the copy's leaves the model as it is."""
    new = module.__class__.__new__(module.__class__)
    state = {key: value.copy() if isinstance(value, (dict, set)) else value for key, value in vars(module).items()}
    state["_modules"] = {name: None if m is None else _shell(m) for name, m in module._modules.items()}
    vars(new).update(state)
    return new
