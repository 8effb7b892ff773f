"""Generate from a causal LM greedily (or score given continuations) and attribute every new token; write G.npz.

``python -m explain generate MODEL --prompts P.txt [--chat] [--targets T.txt] [--max-new-tokens N]
[--sample [--temperature T] [--top-k K] [--top-p P] [--seed S]]
[--method integrated_gradients|saliency|input_x_gradient|deeplift|deep_shap|occlusion] [--steps S] [--tolerance E]
[--baseline pad|unk|zero]
[--granularity token|word|sentence] [--contrast B.txt [--contrast-step K]] [--batch-size B] [--device auto|cpu|cuda] [--quality] --out G.npz``

Each line of P.txt is a prompt (or P.npy / P.npz holds token ids [N, L]); with ``--targets`` each line
of T.txt is the continuation of its prompt, explained by teacher forcing instead of generating. Prompts are
generated in left-padded batches (`explain.generation.greedy`); ``--sample`` draws the tokens instead, prompt i
with seed S + i (`explain.generation.sampling`; stdout adds ``sampling``). With ``--chat`` P is a ``.json`` chat
(a list of ``{"role", "content"}``) or a list of chats, each rendered through the model's chat template in a
Jinja sandbox (`explain.generation.chat`) and encoded as it renders (its special tokens written by the template).
G.npz holds ``input_ids`` [N, L] (prompt + generated, -1 after a text's end), ``prompt_length`` [N],
``generated_length`` [N], ``generated_ids`` [N, T] (-1 after a text's end), ``values`` [N, T, L] (the
attribution of generated token t's log-probability to every earlier position; 0 elsewhere),
``logprobs`` [N, T] and ``completeness_error`` [N, T] (NaN where undefined or past a text's end; integrated
gradients raise a token's steps while its error is over ``--tolerance``, stdout adds ``per_token`` and
``step_raising`` then); with
``--granularity word|sentence`` also ``group_spans`` [N, G, 2] (each group's start and end positions, -1 past
a text's groups) and ``group_values`` [N, T, G] (`explain.generation.granularity`; stdout adds
``granularity`` and ``groups``, each text's group labels). With ``--contrast B.txt`` (one alternative token per
prompt) the token at ``--contrast-step`` is contrasted with it (log p(A) - log p(B),
`explain.generation.contrastive`): G.npz adds ``contrast_values`` [N, L], ``contrast_ids`` [N, 2],
``contrast_difference`` [N] and ``contrast_completeness_error`` [N]; stdout adds ``contrast`` (per text: ``step``,
``token``, ``alternative``, ``difference``, ``completeness_error``).
stdout JSON: ``texts`` (each continuation), ``tokens``, ``completeness_error`` (per text, per token; null
where undefined), ``max_completeness_error``, ``method``, ``params``, ``seconds``, ``shape``, ``out``; with
``--quality`` also ``quality`` (``comprehensiveness``, ``sufficiency``, ``deletion``, ``insertion``: each the
mean over every generated token, `explain.generation.quality`) and ``quality_random`` (the same of a random
attribution, the chance level); ``warnings``: when completeness errors over the tolerance come from half precision
(a bf16 / fp16 model on a GPU, or a ``.pt2``; on the CPU a transformers model is integrated in a float32 copy).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from explain.cli.model_arg import load_model_arg
from explain.cli.out_file import replace_atomically

NAME = "generate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a causal LM: Hugging Face folder or zip whose config.json names a *ForCausalLM, "
                        "a .pt2 of token ids -> logits [N, L, V] (its tokenizer.json beside it), or the sample keycopy")
    parser.add_argument("--spec", default=None, help="spec JSON for models that carry none")
    parser.add_argument("--prompts", required=True, help="prompts: .txt (one per line) or .npy/.npz token ids [N, L]")
    parser.add_argument("--chat", action="store_true", help="--prompts is a .json chat (a list of {role, content}) or a "
                        "list of chats, rendered through the model's chat template (sandboxed)")
    parser.add_argument("--targets", default=None, help="continuations to explain by teacher forcing: .txt (one per prompt) or ids")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="tokens generated per prompt (default 20)")
    parser.add_argument("--sample", action="store_true", help="draw the tokens (seeded) instead of greedy generation")
    parser.add_argument("--temperature", type=float, default=None, help="with --sample: logits divided by T (default 1; 0: greedy)")
    parser.add_argument("--top-k", type=int, default=None, help="with --sample: only the K most likely tokens (default 0: all)")
    parser.add_argument("--top-p", type=float, default=None, help="with --sample: the smallest set holding P of the probability (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="with --sample: prompt i draws with seed S + i (default 0)")
    parser.add_argument("--method", default="integrated_gradients",
                        choices=("integrated_gradients", "saliency", "input_x_gradient", "deeplift", "deep_shap", "occlusion"),
                        help="occlusion: each token / word / sentence (--granularity) replaced by --baseline pad|unk")
    parser.add_argument("--steps", type=int, default=None, help="integrated gradients' steps (default 128)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="integrated gradients' completeness tolerance per generated token, in nats (default 0.01; "
                        "0: none): a token above it gets doubled steps, within GLASSBOX_IG_STEP_BUDGET x --steps")
    parser.add_argument("--baseline", default="pad", choices=("pad", "unk", "zero"),
                        help="reference embeddings at every earlier position (integrated gradients, deeplift); "
                        "the replacement token (occlusion)")
    parser.add_argument("--granularity", default="token", choices=("token", "word", "sentence"),
                        help="also group the attribution's columns into words or sentences (summed)")
    parser.add_argument("--contrast", default=None, help="why A rather than B: one alternative token per prompt "
                        "(.txt, one per line, leading spaces kept, or ids), contrasted with the token at --contrast-step")
    parser.add_argument("--contrast-step", type=int, default=0, help="which token after the prompt is contrasted (default 0)")
    parser.add_argument("--batch-size", type=int, default=0, help="rows per pass (default: fit to memory)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quality", action="store_true",
                        help="also judge the attributions: comprehensiveness, sufficiency, deletion, insertion")
    parser.add_argument("--out", required=True, help="output .npz")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from explain.errors import UsageError
    from explain.generation.attribution import DEFAULT_STEPS, DEFAULT_TOLERANCE
    from explain.generation.causal_lm import half_precision_warning, require_causal_lm
    from explain.generation.continuation import force_continuations
    from explain.generation.greedy import generate_greedy
    from explain.generation.job import generation_arrays, step_record  # G.npz's arrays: those of a generation run
    from explain.generation.occlusion import attribute_texts
    from explain.generation.prompts import decode_ids, read_token_lists, token_strings
    from explain.generation.sampling import generate_sampled

    for name in ("steps", "tolerance"):
        if getattr(args, name) is not None and args.method != "integrated_gradients":
            raise UsageError(f"Method {args.method!r} takes no --{name}.")
    sampling = sampling_arg(args)
    began = time.perf_counter()
    model = load_model_arg(args.model, args.spec)
    require_causal_lm(model, "generate")
    prompts = chat_prompts(model, args.prompts) if args.chat else read_token_lists(args.prompts, model.spec)
    if args.targets:
        continuations = read_token_lists(args.targets, model.spec, special_tokens=False, what="targets",
                                         keep_spaces=True)  # " four" follows "is" as its own token
        texts = force_continuations(model, prompts, continuations)
    else:
        texts = generate_greedy(model, prompts, args.max_new_tokens) if sampling is None else \
            generate_sampled(model, prompts, args.max_new_tokens, sampling)
    steps = args.steps if args.steps is not None else DEFAULT_STEPS
    results = attribute_texts(model, texts, args.method, steps, args.baseline, args.granularity, args.batch_size,
                              args.device, tolerance=DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance)
    arrays = generation_arrays(results)
    contrast = contrast_arrays(model, texts, args, steps, arrays) if args.contrast else []
    groups = grouped_arrays(model.spec, results, args.granularity, arrays) if args.granularity != "token" else []
    out = Path(args.out)
    with replace_atomically(out) as tmp:
        np.savez_compressed(tmp, **arrays)
    errors = [[None if np.isnan(e) else float(e) for e in r.completeness_error] for r in results]
    warnings = sorted({w for r in results if (w := half_precision_warning(r))})  # one line each
    finite = [e for row in errors for e in row if e is not None]
    judged = quality_json(model, results, "unk" if args.baseline == "unk" else "pad", args.device) if args.quality else {}
    return {
        **judged,
        "texts": [decode_ids(r.generated_ids, model.spec) for r in results],
        "prompts": [decode_ids(p, model.spec) for p in prompts],
        "tokens": [token_strings(r.generated_ids, model.spec) for r in results],
        "forced": bool(args.targets),
        "completeness_error": errors,
        "max_completeness_error": max(finite) if finite else None,
        "logprobs": [[float(v) for v in r.logprobs] for r in results],
        "method": args.method,
        "params": results[0].params if results else {},
        **step_record(results),  # per_token and step_raising when the tolerance raised steps
        "seconds": time.perf_counter() - began,
        "shape": list(arrays["values"].shape),
        **({"sampling": sampling.to_dict()} if sampling is not None else {}),
        **({"warnings": warnings} if warnings else {}),
        **({"contrast": contrast} if args.contrast else {}),
        **({"granularity": args.granularity, "groups": groups} if args.granularity != "token" else {}),
        "out": str(out),
    }


def quality_json(model, results: list, replace: str, device: str) -> dict[str, dict[str, float | None]]:
    """``quality`` / ``quality_random``: each token metric's mean over every generated token of every text."""
    from explain.generation.quality import TOKEN_METRICS, generation_quality

    judged = [generation_quality(model, r, replace=replace, device=device) for r in results if len(r.generated_ids)]

    def mean(name: str, chance: bool) -> float | None:
        values = np.concatenate([q[name].random_baseline if chance else q[name].per_input for q in judged] or [[]])
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else None

    return {"quality": {name: mean(name, False) for name in TOKEN_METRICS},
            "quality_random": {name: mean(name, True) for name in TOKEN_METRICS}}


def chat_prompts(model, path: str) -> list[np.ndarray]:
    """The token ids of each chat of a ``.json`` file, rendered through the model's chat template."""
    from explain.generation.chat import read_chats, render_chat
    from explain.generation.prompts import encode_texts

    return encode_texts(render_chat(model, read_chats(path)), model.spec, special_tokens=False)


def sampling_arg(args: argparse.Namespace):
    """The `Sampling` of ``--sample`` and its settings (None: greedy); a setting without ``--sample`` is refused."""
    from explain.errors import UsageError
    from explain.generation.sampling import Sampling

    given = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}
    if not args.sample:
        named = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]
        if named:
            raise UsageError(f"{', '.join(named)} only apply with --sample.")
        return None
    if args.targets:
        raise UsageError("--sample draws new tokens; --targets gives them. Use one of the two.")
    return Sampling(**{k: v for k, v in given.items() if v is not None})


def contrast_arrays(model, texts: list, args: argparse.Namespace, steps: int, arrays: dict[str, np.ndarray]) -> list[dict]:
    """Add ``contrast_values`` [N, L] (log p(A) - log p(B) at the step, attributed; 0 from the step on),
    ``contrast_ids`` [N, 2] (A, B), ``contrast_difference`` [N] and ``contrast_completeness_error`` [N] to
    ``arrays``; return the stdout ``contrast`` list."""
    from explain.generation.contrastive import read_alternatives
    from explain.generation.occlusion import contrast_texts
    from explain.generation.prompts import token_strings

    found = contrast_texts(model, texts, read_alternatives(args.contrast, model.spec), args.contrast_step, args.method,
                           steps, args.baseline, args.granularity, args.batch_size, args.device)
    arrays["contrast_values"] = np.zeros((len(found), arrays["values"].shape[2]), np.float32)
    for i, c in enumerate(found):
        arrays["contrast_values"][i, : c.values.size] = c.values
    arrays["contrast_ids"] = np.asarray([[c.token, c.alternative] for c in found], np.int64).reshape(-1, 2)
    arrays["contrast_difference"] = np.asarray([c.difference for c in found], np.float32)
    arrays["contrast_completeness_error"] = np.asarray([c.completeness_error for c in found], np.float32)
    return [{"step": c.step, "token": token_strings([c.token], model.spec)[0],
             "alternative": token_strings([c.alternative], model.spec)[0], "difference": c.difference,
             "completeness_error": None if np.isnan(c.completeness_error) else c.completeness_error} for c in found]


def grouped_arrays(spec, results: list, granularity: str, arrays: dict[str, np.ndarray]) -> list[list[str]]:
    """Add ``group_values`` [N, T, G] (each row's columns summed per group; occlusion's: the group's drop) and ``group_spans`` [N, G, 2]
    (start, end positions; -1 past a text's groups) to ``arrays``; return each text's group labels."""
    from explain.generation.granularity import group_labels, group_spans, group_values, shared_group_values
    from explain.generation.occlusion import OCCLUSION

    grouped = shared_group_values if results and results[0].method == OCCLUSION else group_values
    spans = [group_spans(r.input_ids, spec, granularity) for r in results]
    most = max((len(s) for s in spans), default=0)
    arrays["group_spans"] = np.full((len(results), most, 2), -1, np.int64)
    arrays["group_values"] = np.zeros((len(results), arrays["values"].shape[1], most), np.float32)
    for i, (r, s) in enumerate(zip(results, spans)):
        arrays["group_spans"][i, : len(s)] = s
        arrays["group_values"][i, : len(r.generated_ids), : len(s)] = grouped(r.values, s)
    return [group_labels(r.input_ids, spec, s) for r, s in zip(results, spans)]
