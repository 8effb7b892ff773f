"""Generation attribution throughput (issue 22): Glassbox vs Captum's ``LLMGradientAttribution`` and the raw model.

For a small Llama (grouped-query attention, RMSNorm, rotary, SiLU-gated MLP) and a small GPT-2,
both built from configs with seeded weights (no hub), N prompts of P random tokens each get
T greedy tokens; every generated token's log-probability is attributed to every earlier
position by integrated gradients on the input embeddings, S Gauss-Legendre steps, the pad
token's embedding as the baseline at every earlier position. Rows, one process, the tools
interleaved, the median of ``--repeats``:

- ``glassbox``: `explain.generation.attribution.attribute_generation` at fixed steps (``tolerance=0``) (one engine chunk per
  text: one forward per step, then the T tokens' backwards over that graph: on the CPU one plain
  backward each, on a GPU one batched backward);
- ``captum``: ``LLMGradientAttribution(LayerIntegratedGradients(model, input embeddings))``
  called as Captum's users do, once per text with the T generated tokens as its target, the
  same steps and the same pad baseline (``internal_batch_size`` left at its default: all
  steps in one batch). Its attributions to the prompt equal ours for the first generated token;
  every token's row is checked against Captum called with the text before that token as its
  prompt (the reference at every earlier position, as ours), and the largest absolute
  difference printed;
- ``raw forward+backward``: the throughput floor of one target per row, the model's own batched
  forward and input gradient over the same T x S rows at full length, no attribution bookkeeping.

``tokens/s`` counts generated tokens attributed per second (N x T over the seconds); the ratio
is Captum's seconds over ours (goal >= 3).

    python benchmarks/generation.py [--quick] [--device cpu|cuda] [--dtype float32|bfloat16|float16] [--prompts N] [--new-tokens T] [--steps S]

Measured on the shared 2-core CPU (no GPU), 1 thread, defaults (4 x 24 tokens, T = 8, S = 32, width 256,
4 layers): Captum / Glassbox 1.62 (Llama) and 1.41 (GPT-2) on a quiet run, 0.86-2.94 across runs while
other jobs shared the cores; max |diff| to Captum 4e-7. On a CPU both are bound by the T x S backward rows
(one forward per step is all the sharing saves: about (F + B) / (F / T + B); B measured about F for the input
gradient alone, autograd already skipping the weights' gradients), so the 3x goal rests on a GPU, where
Captum's per-token batches of S rows leave it idle (``--device cuda``, not yet run).

The CPU levers, each measured interleaved in one process (2 x 24 tokens, the same model sizes, 1 thread,
load 7-11 from other jobs; values unchanged: bitwise equal attributions): the T backwards as T plain
``autograd.grad`` calls over the one graph instead of one ``is_grads_batched`` (vmap) backward paid
1.01-1.28x on Llama and 1.34-1.55x on GPT-2 in three runs (Captum / Glassbox went from 1.34-1.87 to 1.59-2.02
on Llama, from 0.95-1.19 to 1.53-1.74 on GPT-2) and is kept on the CPU. Not kept, no steady gain: parameters'
``requires_grad`` off during the attribution (0.80-1.05x: the weights' gradients were never computed), the
tokens grouped by length so each backward runs over its own prefix only (0.95-1.10x over the plain backwards:
a forward per group buys back at most (L - P) / 2L of the backward rows), the steps in 2 chunks of the grid
(1.03-1.14x over the plain backwards in two runs, within these runs' noise), float64 accumulation (the sum over
steps, a T x S x L x D einsum: 3 ms in float32, 11 ms in float64, of ~2.5 s a text; and it moves the values).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explain import InputSpec, LoadedModel  # noqa: E402
from explain.generation.attribution import attribute_generation  # noqa: E402
from explain.generation.greedy import generate_greedy  # noqa: E402
from explain.loading.huggingface import HFClassifier  # noqa: E402

VOCAB = 512
PAD = 0


def build(kind: str, width: int, layers: int, device: torch.device, dtype: torch.dtype = torch.float32
          ) -> torch.nn.Module:
    """A seeded Llama or GPT-2 causal LM from a config, eager attention (as Glassbox loads one), its weights in
    ``dtype`` (bfloat16 / float16: the GPU path, where Glassbox keeps the model's half precision)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "llama":
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                          num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                          pad_token_id=PAD, bos_token_id=1, eos_token_id=2, attn_implementation="eager")
        model = LlamaForCausalLM(cfg)
    else:
        cfg = GPT2Config(vocab_size=VOCAB, n_embd=width, n_layer=layers, n_head=8, n_positions=512,
                         pad_token_id=PAD, bos_token_id=2, eos_token_id=2, attn_implementation="eager")
        model = GPT2LMHeadModel(cfg)
    return model.eval().to(device, dtype)


class IdsTokenizer:
    """The tokenizer Captum's ``TextTokenInput`` asks for, over plain ids written as text."""

    def encode(self, text, return_tensors=None, add_special_tokens=True, **_kwargs):
        ids = [int(w) for w in text.split()]
        return torch.tensor([ids]) if return_tensors == "pt" else ids

    def decode(self, ids, **_kwargs):
        return " ".join(str(int(i)) for i in (ids.tolist() if hasattr(ids, "tolist") else ids))

    def __call__(self, text, return_offsets_mapping=False, add_special_tokens=True, **_kwargs):
        import re

        spans = [m.span() for m in re.finditer(r"\S+", text)]
        return {"input_ids": [int(text[a:b]) for a, b in spans], "offset_mapping": spans}

    def convert_ids_to_tokens(self, ids):
        return [str(int(i)) for i in ids]


def captum_ig(lm: torch.nn.Module, prompt: np.ndarray, targets: np.ndarray, steps: int) -> np.ndarray:
    """Captum's LLMGradientAttribution(LayerIntegratedGradients) token attributions [targets, prompt]."""
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

    tokenizer = IdsTokenizer()
    llm = LLMGradientAttribution(LayerIntegratedGradients(lm, lm.get_input_embeddings()), tokenizer)
    text = TextTokenInput(tokenizer.decode(prompt), tokenizer, baselines=PAD)
    device = next(lm.parameters()).device
    result = llm.attribute(text, target=torch.as_tensor(targets, device=device), n_steps=steps)
    return result.token_attr.detach().float().cpu().numpy()


def raw_floor(lm: torch.nn.Module, texts, steps: int) -> None:
    """The model's own batched forward + input gradient over the T x S rows of each text (one target a row)."""
    for text in texts:
        ids = torch.as_tensor(text.input_ids[:-1], device=next(lm.parameters()).device)  # [L]
        rows = len(text.generated_ids) * steps
        x = lm.get_input_embeddings()(ids).detach()[None].repeat(rows, 1, 1).requires_grad_(True)  # [R, L, D]
        logits = lm(inputs_embeds=x, use_cache=False, logits_to_keep=1).logits[:, -1]  # [R, V]
        (grad,) = torch.autograd.grad(torch.log_softmax(logits.float(), -1)[:, 0].sum(), x)
        float(grad.sum())  # waits for the device


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


def run(kind: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    lm = build(kind, args.width, args.layers, device, getattr(torch, args.dtype))
    spec = InputSpec(modality="text", input_shape=(args.prompt_length,), dtype="int64", task="causal_lm",
                     name=f"bench-{kind}")
    model = LoadedModel(module=HFClassifier(lm, "text", PAD, "causal_lm"), format="huggingface",
                        sha256="bench", spec=spec)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, VOCAB, args.prompt_length) for _ in range(args.prompts)]
    texts = generate_greedy(model, prompts, args.new_tokens)  # on the model's device
    ours: list = []

    def glassbox():
        # tolerance 0: the asked steps for every token, as Captum (the default raises a token's steps past a
        # 0.01-nat completeness error, within the step budget: more work, other numbers, not the same computation)
        ours[:] = attribute_generation(model, texts, "integrated_gradients", args.steps, "pad", device=args.device,
                                       tolerance=0.0)

    def captum():
        for text in texts:
            captum_ig(lm, text.prompt_ids, text.generated_ids, args.steps)

    def floor():
        raw_floor(lm, texts, args.steps)

    glassbox()  # warm-up, and the numbers compared below
    times = {"glassbox": [], "captum": [], "raw forward+backward": []}
    for _ in range(args.repeats):  # interleaved
        times["glassbox"].append(timed(glassbox, 1, device))
        times["captum"].append(timed(captum, 1, device))
        times["raw forward+backward"].append(timed(floor, 1, device))
    worst = 0.0
    for text, attr in zip(texts, ours):
        p, ids = len(text.prompt_ids), text.input_ids
        for t in range(len(text.generated_ids)):
            theirs = captum_ig(lm, ids[: p + t], ids[p + t: p + t + 1], args.steps)[0]
            worst = max(worst, float(np.abs(attr.values[t, : p + t] - theirs).max()))
    tokens = args.prompts * args.new_tokens
    median = {tool: statistics.median(s) for tool, s in times.items()}
    return [{"model": kind, "tool": tool, "seconds": s, "tokens_per_s": tokens / s,
             "captum_over_this": median["captum"] / s,
             "max_abs_diff": worst if tool == "glassbox" else None,
             "completeness": float(max(a.completeness_error.max() for a in ours)) if tool == "glassbox" else None}
            for tool, s in median.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, 2 prompts: seconds on a 2-core CPU")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--prompt-length", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="the models' weights; half precision only with --device cuda (on a CPU Glassbox "
                             "attributes a float32 copy, Captum the half model: not the same computation)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--models", default="llama,gpt2")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.width, args.layers, args.repeats = 2, 64, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.dtype != "float32" and device.type != "cuda":
        parser.error("--dtype bfloat16 / float16 is the GPU path: give --device cuda")
    print(f"{args.prompts} prompts x {args.prompt_length} tokens, {args.new_tokens} generated tokens each, "
          f"IG {args.steps} steps, pad baseline; width {args.width}, {args.layers} layers; {device} {args.dtype}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats}")
    head = f"{'model':6} {'tool':22} {'seconds':>8} {'tokens/s':>9} {'captum/this':>11} {'max |diff|':>10} {'compl. err':>10}"
    print(head)
    print("-" * len(head))
    for kind in args.models.split(","):
        for r in run(kind, args, device):
            diff = f"{r['max_abs_diff']:10.2e}" if r["max_abs_diff"] is not None else " " * 10
            comp = f"{r['completeness']:10.3g}" if r["completeness"] is not None else ""
            print(f"{r['model']:6} {r['tool']:22} {r['seconds']:8.3f} {r['tokens_per_s']:9.1f} "
                  f"{r['captum_over_this']:11.2f} {diff} {comp}")


if __name__ == "__main__":
    main()
