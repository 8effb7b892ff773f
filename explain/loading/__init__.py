"""Model files in, `LoadedModel` out: format sniffing, the safe reader of each format,
the static operator check and the sandbox that vets user graphs.

``loader`` (`load_model`, the one way in) · ``source`` (reading uploads with the size
cap, zip helpers, weights-only unpickling) · ``weights`` (safetensors, state_dicts) ·
``architectures`` (registered architectures weight-only files load into) ·
``torchscript`` / ``export`` (the two graph formats) · ``script_check`` /
``script_code`` / ``op_allowlist`` (+ ``allowed_ops.txt``) / ``shape_expr`` (the
static check) · ``sandbox`` / ``sandbox_zygote`` (+ ``zygote_identity``: who a shared
zygote and its callers are) / ``vetting`` (running a user graph in a locked-down child at
every batch size the server will use).
"""
