"""Causal language models: what a decoder generates, token by token, and why.

One concept per module; every function that needs the graph itself is marked
`explain.loading.model_process.in_model_process`, so for a user's model it runs in
the model's sandboxed process and only its result (the dataclasses of `result`)
comes back:

- `causal_lm`: the transformers model inside a `LoadedModel` whose spec says
  ``task="causal_lm"``, its special ids, final norm and LM head;
- `prompts`: texts to token ids and back with the model's own ``tokenizer.json``
  (the server's side: the tokenizer is data);
- `greedy`: greedy generation with the KV cache (equal to transformers'
  ``generate(do_sample=False)``), prompts in left-padded batches;
- `sampling`: sampled generation with a seed (transformers' warpers, a generator per prompt);
- `chat`: a chat rendered through the model's chat template in a Jinja sandbox;
- `continuation`: a given continuation scored by teacher forcing;
- `reference`: the baseline embeddings (``pad`` | ``unk`` | ``zero``);
- `attribution`: each generated token's log-probability attributed to every
  earlier position by integrated gradients, saliency or input x gradient, the
  (token x step) grid run through `explain.output.engine` in chunks;
- `deeplift`: DeepLIFT and DeepLIFT-SHAP of the same, exact rules on the
  decoder's captured graph (values add up to each token's log-probability change);
- `granularity`: token attributions grouped into words or sentences;
- `contrastive`: log p(A) - log p(B) at one step, attributed;
- `occlusion`: each token / word / sentence replaced, the log-probability drop; `attribute_texts`;
- `logit_lens`: each layer's top-k next tokens through the final norm and head;
- `attention`: attention per layer and head of prompts padded to the longest;
- `result`: the result types that cross the model-process boundary.
"""
