"""A ``.pt2`` causal LM (token ids [N, L] -> logits [N, L, V]) as `explain.generation` sees a causal LM.

A program whose first output is per-position logits of integer inputs
(`per_position_logits`) loads, in its model process, as an
`ExportedLMModule`: ids [N, L] -> next-token logits [N, V] (the last position, as
`explain.loading.huggingface.HFClassifier` answers for a Hugging Face causal LM), its
``.model`` an `ExportedCausalLM` with what the generation modules ask of transformers'
``*ForCausalLM``: ``forward(input_ids= | inputs_embeds=, attention_mask=)`` with ``.logits``,
``get_input_embeddings()`` and a ``config`` (end-of-sequence and padding ids from the spec's
tokenizer, the longest length the program allows). It has no KV cache (``full_forward``):
generation runs the whole sequence for every new token.

The program's shapes are kept: a static length is reached by padding on the right (a causal
LM's logits at a position read no later position, so they are those of the unpadded text),
a length under the program's range is padded up to it, and one over it is refused in one
line; a static batch runs in chunks of it (the last chunk filled with copies of its first row).

Gradient methods need the embedding output. The embedding lookup is the program's
``aten.embedding`` of a tensor attribute whose indices are the ids input, through reshapes and
integer casts that keep their shape (`embedding_lookup`, the one finder the classifier ``.pt2``
path of `explain.output.engine` uses too); the graph from that node on, with the lookup replaced
by an input, is the function of embeddings (`embedding_graph`). When the ids feed anything else
(besides their sizes), there is no such function: ``get_input_embeddings`` refuses in one line (occlusion, which replaces tokens, still runs).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from explain.errors import IncompatibleInput, TooLarge
from explain.inputs.text import spec_vocabulary

#: Tokens that end a generation, by the names tokenizers give them (Llama 2 / Mistral, GPT-2 / Qwen,
#: Gemma, Llama 3, ChatML); a ``.pt2`` carries no generation config, so its tokenizer's names are read.
EOS_TOKENS = ("</s>", "<|endoftext|>", "<eos>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>")
NO_EMBEDDING = ("This .pt2 causal LM's token ids feed more than one embedding lookup (or none Glassbox can "
                "find), so gradient methods have no embeddings to attribute to.")
NO_EMBEDDING_HINT = "Use --method occlusion (tokens replaced), or load the model's Hugging Face folder."
NO_HIDDEN_STATES = ("A .pt2 causal LM gives its logits only; its hidden states and attention maps (the logit lens, "
                    "the attention views) are out of reach.")
NO_HIDDEN_STATES_HINT = "Load the model's Hugging Face folder for those views."
_SIZE_OPS = ("aten.sym_size.int", "aten.sym_size.default")
#: Reshapes of the ids between the input and the lookup, allowed when they keep the ids' shape.
_SAME_SHAPE_OPS = ("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default", "aten.alias.default",
                   "aten.clone.default", "aten.contiguous.default")
#: Casts of the ids (``ids.long()``), allowed when they keep the ids' shape and an integer dtype.
_CAST_OPS = ("aten.to.dtype", "aten._to_copy.default", "aten.to.dtype_layout")
#: Checks of the ids' metadata (``ids.long()`` asserts their dtype first): not uses of their values.
_CHECK_OPS = ("aten._assert_tensor_metadata.default",)


@dataclass(frozen=True)
class LMSignature:
    """What a causal ``.pt2``'s inputs allow: its length range, a static batch, a mask input."""

    min_length: int
    max_length: int | None  # None: no upper bound
    static_length: int | None
    static_batch: int | None
    min_batch: int
    mask: bool
    mask_dtype: str = "int64"
    max_batch: int | None = None  # None: no upper bound

    def to_dict(self) -> dict[str, Any]:
        return {"min_length": self.min_length, "max_length": self.max_length, "static_length": self.static_length,
                "static_batch": self.static_batch, "min_batch": self.min_batch, "max_batch": self.max_batch,
                "mask": self.mask}


def first_leaf(value: Any) -> Any:
    """The first output of a program as pytree flattens it (a tuple's or list's first item, a dict's first value):
    the logits, whichever way a program returns them."""
    while isinstance(value, (tuple, list, dict)) and value:
        value = next(iter(value.values())) if isinstance(value, dict) else value[0]
    return value


def _first_output(program: Any) -> Any:
    """The fake value of a program's first output (``program``: an exported program or its graph module)."""
    output = next((n for n in program.graph.nodes if n.op == "output"), None)
    first = first_leaf(output.args[0]) if output is not None and output.args else None
    return first.meta.get("val") if isinstance(first, torch.fx.Node) else None


def logits_width(program: Any) -> int | None:
    """V of a program's first output [N, L, V] (an exported program or its graph module); None when symbolic."""
    val = _first_output(program)
    width = val.shape[-1] if isinstance(val, torch.Tensor) and val.dim() else None
    return width if isinstance(width, int) else None


def per_position_logits(ep: Any) -> bool:
    """True when the program's first output is [N, L, V] from an integer first input [N, ...]: a causal LM's
    signature."""
    val = _first_output(ep)
    user = list(ep.graph_signature.user_inputs)
    taken = next((n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and user and n.name == user[0]), None)
    return (isinstance(val, torch.Tensor) and val.dim() == 3 and isinstance(taken, torch.Tensor) and taken.dim() >= 2
            and not taken.is_floating_point() and not taken.is_complex())


def _dim_range(ep: Any, dim: Any) -> tuple[int, int | None, int | None]:
    """(lowest, highest or None, the static value or None) of one placeholder dim."""
    if isinstance(dim, int):
        return dim, dim, dim
    ranges = getattr(ep, "range_constraints", {}) or {}
    found = ranges.get(getattr(getattr(dim, "node", None), "expr", None))
    low = int(found.lower) if found is not None and str(found.lower).lstrip("-").isdigit() else 1
    high = int(found.upper) if found is not None and str(found.upper).isdigit() else None
    return max(low, 0), high, None


def lm_signature(ep: Any) -> LMSignature | None:
    """The causal LM signature of a program: ids [N, L] int64 (and an optional integer or boolean mask of
    the same shape) -> logits [N, L, V] first; None for any other program."""
    if not per_position_logits(ep):
        return None
    user = list(ep.graph_signature.user_inputs)
    vals = [n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and n.name in user]
    if not 1 <= len(vals) <= 2 or not all(isinstance(v, torch.Tensor) and v.dim() == 2 for v in vals):
        return None
    if len(vals) == 2 and (vals[1].is_floating_point() or vals[1].shape != vals[0].shape):
        return None
    low, high, static = _dim_range(ep, vals[0].shape[1])
    b_low, b_high, b_static = _dim_range(ep, vals[0].shape[0])
    mask_dtype = str(vals[1].dtype).removeprefix("torch.") if len(vals) == 2 else "int64"
    return LMSignature(max(low, 1), high, static, b_static, max(b_low, 1), len(vals) == 2, mask_dtype, b_high)


@dataclass(frozen=True)
class EmbeddingLookup:
    """The token-embedding lookup of an exported program (`embedding_lookup`)."""

    node: torch.fx.Node  # aten.embedding(table [V, D], ids [N, L]) -> [N, L, D]
    weight_name: str  # the table's attribute in the program
    weight: torch.Tensor  # the table [V, D]
    chain: frozenset[torch.fx.Node]  # the ids input and its reshapes / casts up to the lookup
    alone: bool  # the ids feed nothing else (but sizes and checks): the program on is a function of embeddings alone


def embedding_lookup(gm: torch.fx.GraphModule) -> EmbeddingLookup | None:
    """The token-embedding lookup of an exported program (``ep.module()``), or None: the ``aten.embedding`` of a
    tensor attribute whose indices are the ids (the first input) through reshapes and integer casts that keep
    their shape (GPT-2's ``input_ids.view(-1, L)``, a user's ``ids.long()``); of several such, the largest table.

    The one finder of both paths: the classifier path (`explain.output.model_function.ModelFunction`) substitutes the
    node's value and still feeds the ids (a mask of them may be computed too); the causal LM path
    (`embedding_graph`) needs ``alone``. Lookups of other indices (positions, segments, ids changed by value,
    as ``ids.clamp(min=0)``) are never the token embedding, whatever their table's size.
    """
    ids = next((n for n in gm.graph.nodes if n.op == "placeholder"), None)
    if ids is None:
        return None
    parent: dict[torch.fx.Node, torch.fx.Node | None] = {ids: None}
    found: list[tuple[torch.fx.Node, torch.Tensor]] = []
    todo = [ids]
    while todo:
        at = todo.pop(0)
        for user in _uses(at):
            if str(user.target) == "aten.embedding.default" and len(user.args) > 1 and user.args[1] is at:
                weight = user.args[0]
                table = _attribute(gm, str(weight.target)) if getattr(weight, "op", None) == "get_attr" else None
                if isinstance(table, torch.Tensor):
                    found.append((user, table))
            elif _keeps_ids(user, at) and user not in parent:
                parent[user] = at
                todo.append(user)
    if not found:
        return None
    node, table = max(found, key=lambda f: f[1].shape[0])  # max keeps the first of equal tables
    chain, at = set(), node.args[1]
    while at is not None:
        chain.add(at)
        at = parent[at]
    alone = len(found) == 1 and all(set(_uses(n)) <= chain | {node} for n in chain)
    return EmbeddingLookup(node, str(node.args[0].target), table, frozenset(chain), alone)


def _uses(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The users of ``node`` but its sizes and input checks."""
    return [u for u in node.users if not (u.op == "call_function" and str(u.target) in _SIZE_OPS + _CHECK_OPS)
            and not (u.op == "call_module" and str(u.target) == "_guards_fn")]


def _keeps_ids(node: torch.fx.Node, at: torch.fx.Node) -> bool:
    """True when ``node`` is a reshape or an integer cast of ``at`` (its first argument) of the same shape."""
    val = node.meta.get("val")
    return (node.op == "call_function" and str(node.target) in _SAME_SHAPE_OPS + _CAST_OPS and bool(node.args)
            and node.args[0] is at and _shape_text(node) == _shape_text(at)
            and isinstance(val, torch.Tensor) and not val.is_floating_point() and not val.is_complex())


def _shape_text(node: torch.fx.Node) -> str | None:
    val = node.meta.get("val")
    return str(list(val.shape)) if isinstance(val, torch.Tensor) else None


def _attribute(gm: nn.Module, target: str) -> Any:
    owner: Any = gm
    for part in target.split("."):
        owner = getattr(owner, part, None)
    return owner


def embedding_graph(gm: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, str] | None:
    """The program from its embedding lookup on: (embeds [N, L, D][, mask]) -> its outputs (the ids' sizes read
    from the embeddings'), and the lookup's weight name; None without a lookup the ids feed alone
    (`embedding_lookup`)."""
    found = embedding_lookup(gm)
    if found is None or not found.alone:
        return None
    lookup, chain = found.node, found.chain  # the ids and their reshapes / casts up to the lookup
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, Any] = {}
    embeds = graph.placeholder("glassbox_inputs_embeds")
    for node in gm.graph.nodes:
        if node is lookup:
            env[node] = embeds
        elif (node in chain or (node.op == "call_module" and str(node.target) == "_guards_fn")
              or (node.op == "call_function" and str(node.target) in _CHECK_OPS and node.args[0] in chain)):
            continue  # the ids (sizes below) and the original's input checks (the caller checks sizes)
        elif node.op == "call_function" and str(node.target) in _SIZE_OPS and node.args[0] in chain:
            env[node] = graph.call_function(torch.ops.aten.sym_size.int, (embeds, node.args[1]))
            env[node].meta = dict(node.meta)
        else:
            env[node] = graph.node_copy(node, lambda n: env[n])
    graph.eliminate_dead_code()
    graph.lint()
    return torch.fx.GraphModule(gm, graph), found.weight_name


def _vocab_size(gm: torch.fx.GraphModule) -> int:
    """V of the program's first output [N, L, V] (a stand-in width for memory estimates without an embedding)."""
    width = logits_width(gm)
    return 1024 if width is None else width


class TokenEmbedding(nn.Module):
    """The program's embedding table as a module (ids [..] -> [.., D]); holds no parameter of its own."""

    def __init__(self, program: nn.Module, target: str):
        super().__init__()
        self._program = [program]  # a list: not a submodule (its parameters stay the program's)
        self._target = target

    @property
    def weight(self) -> torch.Tensor:
        return _attribute(self._program[0], self._target)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight)


class ExportedCausalLM(nn.Module):
    """A causal ``.pt2`` answering as transformers' ``*ForCausalLM`` does, without a KV cache."""

    full_forward = True  # no KV cache: greedy runs the whole sequence per new token, one prompt at a time

    def __init__(self, program: torch.fx.GraphModule, signature: LMSignature):
        super().__init__()
        self.program = program
        self.signature = signature
        found = embedding_graph(program)
        self.from_embeds = found[0] if found else None
        self._embedding = TokenEmbedding(program, found[1]) if found else None
        width = self._embedding.weight.shape[1] if self._embedding is not None else _vocab_size(program)
        self.config = SimpleNamespace(eos_token_id=None, pad_token_id=None, bos_token_id=None, hidden_size=int(width),
                                      max_position_embeddings=signature.static_length or signature.max_length)

    def bind_vocabulary(self, spec: Any) -> None:
        """Read the end-of-sequence id (`EOS_TOKENS`) from the spec's tokenizer into ``config``."""
        found = [i for i, token in enumerate(spec_vocabulary(spec) or ()) if token in EOS_TOKENS]
        self.config.eos_token_id = found or None

    def program_args(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The program's own inputs for ids [N, L] its signature takes: (ids[, a mask of ones [N, L]])."""
        if not self.signature.mask:
            return (ids,)
        return ids, torch.ones_like(ids, dtype=getattr(torch, self.signature.mask_dtype))

    def get_input_embeddings(self) -> nn.Module:
        if self._embedding is None:
            raise IncompatibleInput(NO_EMBEDDING, NO_EMBEDDING_HINT)
        return self._embedding

    def forward(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, use_cache: bool = False,
                output_hidden_states: bool = False, output_attentions: bool = False, **_: Any) -> SimpleNamespace:
        """``.logits`` [N, L, V] of ids [N, L] or of embeddings [N, L, D] (the program from its lookup on)."""
        if output_hidden_states or output_attentions:
            raise IncompatibleInput(NO_HIDDEN_STATES, NO_HIDDEN_STATES_HINT)
        if inputs_embeds is not None:
            if self.from_embeds is None:
                raise IncompatibleInput(NO_EMBEDDING, NO_EMBEDDING_HINT)
            first, graph = inputs_embeds, self.from_embeds  # [N, L, D]
        else:
            first, graph = input_ids, self.program  # [N, L]
        n, length = first.shape[:2]
        mask = attention_mask if attention_mask is not None else torch.ones((n, length), device=first.device)  # [N, L]
        mask = mask.to(getattr(torch, self.signature.mask_dtype))
        logits = self._run(graph, first, mask)
        return SimpleNamespace(logits=logits[:n, :length], past_key_values=None)

    def _run(self, graph: nn.Module, first: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """graph(first [N, L, ...][, mask [N, L]]) [N, L, V], the program's static sizes reached by padding, a batch
        over its largest run in chunks."""
        sig, length = self.signature, first.shape[1]
        if sig.max_length is not None and length > sig.max_length:
            raise TooLarge(f"The text has {length} tokens, over the {sig.max_length} this .pt2 program takes.",
                           "Use a shorter prompt or fewer new tokens.")
        want = sig.static_length or max(length, sig.min_length)
        if want > length:  # right padding: no earlier position reads it
            extra = want - length
            first = torch.cat([first, first.new_zeros((first.shape[0], extra, *first.shape[2:]))], 1)
            mask = torch.cat([mask, mask.new_zeros((mask.shape[0], extra))], 1)
        most = sig.max_batch or max(first.shape[0], sig.min_batch)  # the largest batch the program takes
        rows = sig.static_batch or min(max(first.shape[0], sig.min_batch), most)
        outs = []
        for lo in range(0, first.shape[0], rows):  # chunks of the batch sizes the program takes
            part = [t[lo: lo + rows] for t in (first, mask)]
            short = (sig.static_batch or max(part[0].shape[0], sig.min_batch)) - part[0].shape[0]
            if short:  # fill the batch with copies of its first row
                part = [torch.cat([t, t[:1].expand(short, *t.shape[1:])], 0) for t in part]
            out = graph(*part) if sig.mask else graph(part[0])
            out = first_leaf(out)  # [rows, L, V] of a tensor, a tuple or a dict (`per_position_logits`)
            if not out.is_floating_point():
                raise IncompatibleInput(f"This .pt2 causal LM returns {str(out.dtype).removeprefix('torch.')} logits, "
                                        "not floating-point ones (log-probabilities need them).",
                                        "Export the model's logits before any argmax or cast.")
            outs.append(out[: out.shape[0] - short])
        return torch.cat(outs, 0) if len(outs) > 1 else outs[0]


class ExportedLMModule(nn.Module):
    """ids [N, L] -> the next-token logits [N, V] of a causal ``.pt2``; ``.model`` is its `ExportedCausalLM`."""

    def __init__(self, program: torch.fx.GraphModule, signature: LMSignature):
        super().__init__()
        self.model = ExportedCausalLM(program, signature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=x).logits[:, -1]  # [N, L] -> [N, V]


#: Where a causal ``.pt2``'s tokenizer may come from, for the line that asks for one.
NO_TOKENIZER = ("This .pt2 is a causal LM (token ids -> logits at every position) but comes with no tokenizer, "
                "so prompts cannot be read nor tokens shown.")
NO_TOKENIZER_HINT = ("Give its tokenizer.json as the spec (Spec upload, --spec), put it beside the .pt2, or save it in: "
                     "torch.export.save(..., extra_files={'tokenizer.json': text}).")


def causal_spec(signature: dict[str, Any], tokenizer: str | None, name: str = "model") -> Any:
    """The spec of a causal ``.pt2`` read from its signature (`LMSignature.to_dict`) and its ``tokenizer.json``:
    text token ids of the longest length the program takes (at most the Hugging Face loader's
    ``MAX_TEXT_LENGTH``, as for a folder), ``task="causal_lm"``.

    Raises:
        IncompatibleInput: no tokenizer (`NO_TOKENIZER`).
    """
    from explain.loading.huggingface import MAX_TEXT_LENGTH
    from explain.spec import InputSpec

    if not tokenizer:
        raise IncompatibleInput(NO_TOKENIZER, NO_TOKENIZER_HINT)
    longest = signature.get("static_length") or signature.get("max_length") or MAX_TEXT_LENGTH
    return InputSpec(modality="text", input_shape=(min(int(longest), MAX_TEXT_LENGTH),), dtype="int64", task="causal_lm",
                     lowercase=False, tokenizer=tokenizer, name=name)
