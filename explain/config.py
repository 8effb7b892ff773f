"""Operator settings: size limits, sandbox limits and trusted mode.

Every value is read from the environment when it is used (not at import), so
an operator, a test or the app can change it without re-importing Glassbox.

Environment variables:
    GLASSBOX_MAX_UPLOAD_MB: largest model or input file accepted (default 200;
        the app's ``.streamlit/config.toml`` ``server.maxUploadSize`` uses the
        same number).
    GLASSBOX_MAX_IMAGE_PIXELS: largest image (width x height) decoded
        (default 40 million): a bigger one is a decompression bomb.
    GLASSBOX_MAX_PARAMETERS / GLASSBOX_MAX_ACTIVATIONS / GLASSBOX_MAX_LAYERS: the
        largest model a weight file's or a Hugging Face config may ask Glassbox to
        build, counted from the config before anything is built: parameters
        (default 500 million), activation elements of one sample's forward pass
        (default 200 million) and layers (default 10,000).
    GLASSBOX_MAX_LABELS: most classes a Hugging Face config may declare (default 100,000).
    GLASSBOX_MAX_VOCABULARY / GLASSBOX_MAX_TOKENIZER_MB: the longest vocabulary
        (default 1 million tokens) and largest ``tokenizer.json`` (default 64) read.
    GLASSBOX_MAX_PICKLE_OPCODES: opcodes scanned in one pickle of a TorchScript
        archive before it is refused (default 5 million).
    GLASSBOX_MAX_PROGRAM_MB: the largest ``.pt2`` program (``models/model.json``, default 32)
        parsed; its Python objects take some 5 to 25 times its bytes.
    GLASSBOX_MODEL_PROCESSES / GLASSBOX_MODEL_CALL_TIMEOUT_S: model processes (a user's
        graph each) alive at once (default 8) and seconds one request to one may take (600).
    GLASSBOX_MODEL_PROCESS_GPU: ``auto`` (default: when this process sees a GPU), ``1`` or ``0``:
        whether model processes get the GPUs (their device files opened through Landlock).
    GLASSBOX_TRUSTED: ``1`` turns on trusted mode (full pickles of the
        operator's own files). Off by default.
    GLASSBOX_SANDBOX_TIMEOUT_S: wall-clock (and CPU-time) limit of the sandbox
        child that opens a TorchScript or ``.pt2`` file first and vets its
        batch sizes, counted after the child has imported torch (default 60).
    GLASSBOX_SANDBOX_MEMORY_MB: address space that child may add after importing
        torch (default 4096).
    GLASSBOX_VETTED_BATCH: the largest batch a user's graph (TorchScript,
        ``.pt2``) is run at in that child, and so the largest chunk the server
        runs it at (default 64; rounded down to a power of two).
    GLASSBOX_SANDBOX_ZYGOTE: ``0`` starts every sandbox child as a fresh
        Python instead of forking it from a warmed-up helper process (slower).
    GLASSBOX_HOME: the team workspace's folder (default ``~/.glassbox``): the
        SQLite database ``glassbox.db``, the content-addressed ``blobs/`` and
        the session-cookie key.
    GLASSBOX_DATABASE_URL: the workspace database as an SQLAlchemy URL
        (e.g. ``postgresql+psycopg://user@host/glassbox``); default SQLite in
        ``GLASSBOX_HOME``.
    GLASSBOX_EXTERNAL_WORKER: ``1``: job queue workers run separately
        (``python -m explain worker``); the app and the API start none of their own.
    GLASSBOX_JOB_HEARTBEAT_S / GLASSBOX_JOB_STALE_S / GLASSBOX_JOB_MAX_ATTEMPTS: how
        often a worker reports a running job (default 2 s), after how long without a
        report the job is taken back (default 30 s), and how many tries it gets (3).
    GLASSBOX_BLOB_SWEEP_AGE_S: how long a stored file no row names (a save killed between the
        file and its row) stays before a server's or worker's start removes it (default 3600).
    GLASSBOX_WORKERS: queue worker threads per serving process (the app, ``serve``, ``worker``;
        ``--workers N`` overrides it); default one per GPU, else min(2, CPU cores).
    GLASSBOX_IG_STEP_BUDGET: how far integrated gradients' completeness tolerance may raise the
        steps asked, as a multiple of them (default 4: at most 4x the asked steps per input).
    GLASSBOX_IG_STEP_SECONDS: seconds the tolerance loop may spend raising steps after the asked
        steps ran (default 60); it stops, saying so in the run, at the first limit reached.
    GLASSBOX_API_MAX_BODY_MB: the HTTP API's largest request body (default 16).
    GLASSBOX_MAX_JOBS: queued-or-running jobs per caller (a person, a token, the CLI's
        operator), whoever submits them: a page, the API or the CLI (default 16; the older
        name ``GLASSBOX_API_MAX_JOBS`` is read when it is unset).
    GLASSBOX_API_MAX_BUFFERED_MB: request bytes the HTTP API holds at once across all
        requests in flight (default 64); a body that does not fit now gets 503.
    GLASSBOX_MAX_BATCH_ROWS / GLASSBOX_MAX_DELAY_MS: the API's dynamic batching (``serve
        --max-batch-rows / --max-delay-ms``): concurrent ``:predict`` requests of one model version
        (and one-row ``:explain`` requests of one caller, version, method and parameters) run as
        one engine batch of at most this many rows (default 64), gathered for at most this many
        milliseconds (default 5; 0 turns batching off), `explain.service.batching`.


    GLASSBOX_RAY_ADDRESS: a Ray cluster's address (``ray start --head`` prints it);
        dataset-wide runs then go to its actors (`explain.dataset.ray_engine`).
"""
from __future__ import annotations

import os
from pathlib import Path

#: Default largest upload in MiB (``.streamlit/config.toml`` uses the same).
MAX_UPLOAD_MB = 200
#: Default largest decoded image, in pixels.
MAX_IMAGE_PIXELS = 40_000_000
#: Default wall-clock seconds for the sandbox child (after it imported torch).
SANDBOX_TIMEOUT_S = 60.0
#: Default address space (MiB) the sandbox child may map beyond torch itself.
SANDBOX_MEMORY_MB = 4096
#: Default largest batch a user's graph is vetted (and then run) at.
VETTED_BATCH = 64
#: Model processes (a user's graph each, `explain.loading.model_process`) alive at once.
MODEL_PROCESSES = 8
#: Wall-clock seconds one request to a model process may take.
MODEL_CALL_TIMEOUT_S = 600.0

_TRUE = {"1", "true", "yes", "on"}


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        return default
    return value if value > 0 else default


def max_upload_mb() -> float:
    """Largest accepted file in MiB (env ``GLASSBOX_MAX_UPLOAD_MB`` or 200)."""
    return _env_number("GLASSBOX_MAX_UPLOAD_MB", MAX_UPLOAD_MB)


def max_upload_bytes() -> int:
    """`max_upload_mb` in bytes."""
    return int(max_upload_mb() * 1024 * 1024)


def max_image_pixels() -> int:
    """Largest image (width x height) decoded (env ``GLASSBOX_MAX_IMAGE_PIXELS``)."""
    return int(_env_number("GLASSBOX_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS))


#: Default caps on what a file's config may ask to build (`explain.loading.architectures`, Hugging Face).
MAX_PARAMETERS = 500_000_000
MAX_ACTIVATIONS = 200_000_000
MAX_LAYERS = 10_000
MAX_LABELS = 100_000
#: Default longest vocabulary (tokens) and largest ``tokenizer.json`` (MiB) read.
MAX_VOCABULARY = 1_000_000
MAX_TOKENIZER_MB = 64
#: Default most opcodes scanned in one TorchScript pickle.
MAX_PICKLE_OPCODES = 5_000_000
#: Default largest ``.pt2`` program JSON (MiB) parsed: torch.export.save writes ~2 KB per node (an 80-layer
#: Llama ~16 MiB).
MAX_PROGRAM_MB = 32


def max_parameters() -> int:
    """Most parameters (state_dict elements) a config may ask for (env ``GLASSBOX_MAX_PARAMETERS``)."""
    return int(_env_number("GLASSBOX_MAX_PARAMETERS", MAX_PARAMETERS))


def max_activations() -> int:
    """Most activation elements of one sample's forward pass (env ``GLASSBOX_MAX_ACTIVATIONS``)."""
    return int(_env_number("GLASSBOX_MAX_ACTIVATIONS", MAX_ACTIVATIONS))


def max_layers() -> int:
    """Most layers a config may ask for (env ``GLASSBOX_MAX_LAYERS``)."""
    return int(_env_number("GLASSBOX_MAX_LAYERS", MAX_LAYERS))


def max_labels() -> int:
    """Most classes a Hugging Face config may declare (env ``GLASSBOX_MAX_LABELS``)."""
    return int(_env_number("GLASSBOX_MAX_LABELS", MAX_LABELS))


def max_vocabulary() -> int:
    """Longest vocabulary read, in tokens (env ``GLASSBOX_MAX_VOCABULARY``)."""
    return int(_env_number("GLASSBOX_MAX_VOCABULARY", MAX_VOCABULARY))


def max_tokenizer_bytes() -> int:
    """Largest ``tokenizer.json`` read, in bytes (env ``GLASSBOX_MAX_TOKENIZER_MB``)."""
    return int(_env_number("GLASSBOX_MAX_TOKENIZER_MB", MAX_TOKENIZER_MB) * 1024 * 1024)


def max_pickle_opcodes() -> int:
    """Most opcodes scanned in one TorchScript pickle (env ``GLASSBOX_MAX_PICKLE_OPCODES``)."""
    return int(_env_number("GLASSBOX_MAX_PICKLE_OPCODES", MAX_PICKLE_OPCODES))


def max_program_bytes() -> int:
    """Largest ``.pt2`` program JSON parsed, in bytes (env ``GLASSBOX_MAX_PROGRAM_MB``)."""
    return int(_env_number("GLASSBOX_MAX_PROGRAM_MB", MAX_PROGRAM_MB) * 1024 * 1024)


def sandbox_timeout_s() -> float:
    """Wall-clock limit of the sandbox child after its imports (env ``GLASSBOX_SANDBOX_TIMEOUT_S``)."""
    return _env_number("GLASSBOX_SANDBOX_TIMEOUT_S", SANDBOX_TIMEOUT_S)


def sandbox_memory_bytes() -> int:
    """Address space the sandbox child may add after importing torch (env ``GLASSBOX_SANDBOX_MEMORY_MB``)."""
    return int(_env_number("GLASSBOX_SANDBOX_MEMORY_MB", SANDBOX_MEMORY_MB) * 1024 * 1024)


def model_processes() -> int:
    """Model processes alive at once, least recently used stopped first (env ``GLASSBOX_MODEL_PROCESSES``)."""
    return max(1, int(_env_number("GLASSBOX_MODEL_PROCESSES", MODEL_PROCESSES)))


def model_call_timeout_s() -> float:
    """Seconds one request to a model process may run before it is stopped (env ``GLASSBOX_MODEL_CALL_TIMEOUT_S``)."""
    return _env_number("GLASSBOX_MODEL_CALL_TIMEOUT_S", MODEL_CALL_TIMEOUT_S)


def model_process_gpu() -> bool:
    """Whether model processes get this server's GPUs (env ``GLASSBOX_MODEL_PROCESS_GPU``: ``auto``, the
    default, when torch sees a GPU here; ``0`` never; ``1`` always)."""
    value = os.environ.get("GLASSBOX_MODEL_PROCESS_GPU", "auto").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in _TRUE:
        return True
    import torch

    return torch.cuda.is_available()


def vetted_batch() -> int:
    """Largest batch a user's graph is vetted at, a power of two (env ``GLASSBOX_VETTED_BATCH`` or 64)."""
    value = max(1, int(_env_number("GLASSBOX_VETTED_BATCH", VETTED_BATCH)))
    return 1 << (value.bit_length() - 1)


def sandbox_zygote() -> bool:
    """False when ``GLASSBOX_SANDBOX_ZYGOTE=0``: sandbox children start fresh instead of forked."""
    return os.environ.get("GLASSBOX_SANDBOX_ZYGOTE", "").strip() != "0"


#: Seconds a command line's shared zygote waits, unused, for the next call (`zygote_idle_s`).
ZYGOTE_IDLE_S = 300.0


def zygote_idle_s() -> float:
    """How long the zygote a ``python -m explain`` call shares with the calls after it stays up unused
    (env ``GLASSBOX_ZYGOTE_IDLE_S``, default 300 s; 0: each call starts and ends its own zygote)."""
    raw = os.environ.get("GLASSBOX_ZYGOTE_IDLE_S", "").strip()
    try:
        return max(0.0, float(raw)) if raw else ZYGOTE_IDLE_S
    except ValueError:
        return ZYGOTE_IDLE_S


def trusted_mode() -> bool:
    """True when the operator set ``GLASSBOX_TRUSTED=1`` (full pickles allowed)."""
    return os.environ.get("GLASSBOX_TRUSTED", "").strip().lower() in _TRUE


def glassbox_home() -> Path:
    """The workspace folder (env ``GLASSBOX_HOME`` or ``~/.glassbox``); not created here."""
    raw = os.environ.get("GLASSBOX_HOME", "").strip()
    return Path(raw).expanduser() if raw else Path.home() / ".glassbox"


def database_url() -> str:
    """The workspace database URL (env ``GLASSBOX_DATABASE_URL``, else SQLite in `glassbox_home`)."""
    raw = os.environ.get("GLASSBOX_DATABASE_URL", "").strip()
    return raw or f"sqlite:///{glassbox_home() / 'glassbox.db'}"


def external_worker() -> bool:
    """True when ``GLASSBOX_EXTERNAL_WORKER=1``: no embedded queue worker in the app or the API."""
    return os.environ.get("GLASSBOX_EXTERNAL_WORKER", "").strip().lower() in _TRUE


def job_heartbeat_s() -> float:
    return _env_number("GLASSBOX_JOB_HEARTBEAT_S", 2.0)


def job_stale_s() -> float:
    return _env_number("GLASSBOX_JOB_STALE_S", 30.0)


def blob_sweep_age_s() -> float:
    """How old a blob no row names must be before a start sweeps it (``GLASSBOX_BLOB_SWEEP_AGE_S``, default an
    hour): longer than any save between its blob and its row."""
    return _env_number("GLASSBOX_BLOB_SWEEP_AGE_S", 3600.0)


def job_max_attempts() -> int:
    return int(_env_number("GLASSBOX_JOB_MAX_ATTEMPTS", 3))


def default_workers() -> int:
    """Worker threads per serving process (``GLASSBOX_WORKERS``): else one per GPU, else min(2, cores)."""
    raw = os.environ.get("GLASSBOX_WORKERS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    try:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # no torch, no driver: count CPUs
        gpus = 0
    return gpus or min(2, os.cpu_count() or 1)


def ig_step_budget() -> float:
    """The most integrated gradients' tolerance may multiply the asked steps (``GLASSBOX_IG_STEP_BUDGET``, 4)."""
    return max(1.0, _env_number("GLASSBOX_IG_STEP_BUDGET", 4.0))


def ig_step_seconds() -> float:
    """Seconds the tolerance loop may spend raising steps (``GLASSBOX_IG_STEP_SECONDS``, 60)."""
    return _env_number("GLASSBOX_IG_STEP_SECONDS", 60.0)


def api_max_body_bytes() -> int:
    return int(_env_number("GLASSBOX_API_MAX_BODY_MB", 16) * 1024 * 1024)


def api_max_buffered_bytes() -> int:
    """Request body bytes the API buffers across all requests in flight (``GLASSBOX_API_MAX_BUFFERED_MB``)."""
    return int(_env_number("GLASSBOX_API_MAX_BUFFERED_MB", 64) * 1024 * 1024)


#: Default most rows in one dynamically batched engine call of the API, and the longest wait (ms).
MAX_BATCH_ROWS = 64
MAX_DELAY_MS = 5.0


def max_batch_rows() -> int:
    """Rows one batched engine call of the API may gather (``GLASSBOX_MAX_BATCH_ROWS``, 64)."""
    return int(_env_number("GLASSBOX_MAX_BATCH_ROWS", MAX_BATCH_ROWS))


def max_delay_ms() -> float:
    """How long (ms) a batch of the API waits for company (``GLASSBOX_MAX_DELAY_MS``, 5; 0: no batching)."""
    raw = os.environ.get("GLASSBOX_MAX_DELAY_MS", "").strip()
    try:
        return max(0.0, float(raw)) if raw else MAX_DELAY_MS
    except ValueError:
        return MAX_DELAY_MS


def max_jobs_per_caller() -> int:
    """Queued-or-running jobs one caller may have (``GLASSBOX_MAX_JOBS``, else the older
    ``GLASSBOX_API_MAX_JOBS``, else 16): the one limit `explain.service.client.submit` applies."""
    return int(_env_number("GLASSBOX_MAX_JOBS", _env_number("GLASSBOX_API_MAX_JOBS", 16)))


def ray_address() -> str | None:
    """The Ray cluster dataset-wide runs use (``GLASSBOX_RAY_ADDRESS``), None when unset."""
    return os.environ.get("GLASSBOX_RAY_ADDRESS", "").strip() or None
