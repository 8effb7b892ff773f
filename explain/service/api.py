"""The HTTP API (FastAPI), in the shape of the KServe V1 data plane; ``python -m explain serve``.

    GET    /v1/models                     registry names
    GET    /v1/models/{name}              one version (NAME, NAME@vN, NAME@ALIAS)
    POST   /v1/models/{name}:predict      {"instances": [...]} -> {"predictions": [...]}  class probabilities
    POST   /v1/models/{name}:explain      {"instances", "parameters"} -> {"explanations": [...], "run": id}
    POST   /v1/models/{name}:generate     {"prompts", "parameters"} -> {"texts", "generated_ids", "attributions",
                                          "logprobs", ..., ["views",] "run": id}   a causal LM (`explain.generation.job`;
                                          "views" with parameters.views: logit_lens / attention / contrast)
    POST   /v1/jobs                       the same body plus "model" -> {"job": id}   (202)
    GET    /v1/jobs/{id}                  status, progress, run
    DELETE /v1/jobs/{id}                  cancel

``:predict`` and ``:explain`` also take KServe V2's binary tensor bodies (``Content-Type:
application/octet-stream`` with ``Inference-Header-Content-Length``: a JSON header, then the rows' raw
bytes; `explain.service.binary`), and ``:predict`` answers such a request in V2's ``"outputs"``, as
bytes when it asks (``binary_data_output``). Their JSON bodies are read by pydantic's own parser in
one pass (`parsed`) and ``:predict``'s answer is written by orjson, skipping FastAPI's encoder.

A request is checked against its model before anything runs or is queued (instances' shape and
dtype, target range, the method fits the model, parameters' types and ranges: `check_explain`):
400 with one line and no job. Another verb on an action route (``GET …:predict``) is 405 with an
``Allow`` header. Concurrent ``:predict`` requests of one model version, concurrent one-row
``:explain`` requests of one caller, version, method, parameters and target, and concurrent greedy
``:generate`` requests of one caller, version and parameters are batched (`explain.service.batching`,
``max_batch_rows`` / ``max_delay_ms``; ``:predict``'s and ``:explain``'s requests wait in the event loop,
one worker thread per batch: `Batcher.arun`): one engine batch (one job for ``:explain`` and ``:generate``,
whose run holds every member's rows: ``run_rows`` says which are this request's), each request
answered with its own rows. A sampled ``:generate`` (prompt i drawn with seed + i) or one with
``targets`` or ``messages`` is a job of its own (`generates_alone`).

``Authorization: Bearer <token>`` (``python -m explain tokens add NAME --role ROLE``); the token's
role is looked up in the workspace on every request, and the token itself before a byte of the
request's body is read (`Gate`), so a caller without one cannot make the server hold any of it.
Reading (models, jobs) and ``:predict`` need a viewer; ``:explain`` and ``/v1/jobs`` save a run under
the token's name, so they need an editor, as saving a run does on the page. ``:explain`` is an interactive job in the one queue, answered
when its worker has saved the run. Errors are ``{"error": "<one line>"}``: 400/422 malformed,
401 no or a wrong token, 403 the role may not, 404 unknown, 408 a body not whole within 60 s,
413 body over the cap (``GLASSBOX_API_MAX_BODY_MB``), 429 too many of the token's jobs queued or running (``GLASSBOX_MAX_JOBS``,
the one per-caller limit of `explain.service.client.submit`), 503 the bodies of
the requests in flight already fill ``GLASSBOX_API_MAX_BUFFERED_MB`` (one token's at most one body's cap), 504 an ``:explain`` that did not
finish in time; never a traceback.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any

import anyio
import numpy as np
import orjson
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from explain.config import api_max_body_bytes, api_max_buffered_bytes, external_worker, max_batch_rows, max_delay_ms
from explain.errors import GlassboxError, IncompatibleInput, UsageError, http_status, one_line
from explain.generation.job import JOB_KIND as GENERATE_JOB
from explain.generation.job import generation_answer, generation_request
from explain.model import LoadedModel
from explain.service import binary
from explain.service.asgi import ActionRoutes, ApiError, Gate, OneLineErrors, error_response
from explain.service.batching import Batcher
from explain.service.client import JobNotDone, finished_run, wait
from explain.service.client import submit as submit_job
from explain.service.lookups import Lookups
from explain.service.models import ModelCache, ModelStore
from explain.service.runners import explain_job, model_array
from explain.workspace import Actor, SavedRun, Workspace
from explain.workspace.jobs import JobInfo
from explain.workspace.registry import VersionInfo
from explain.workspace.roles import Action
from explain.workspace.run_kinds import read_run

#: the action routes ``/v1/models/{name}:ACTION`` (all POST)
ACTIONS = ("predict", "explain", "generate")


class Instances(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: list[Any] = Field(..., description="model-ready inputs, one per instance (nested lists)")


class ExplainBody(Instances):
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"method": "integrated_gradients"},
        description='"method" (required), "target" (int, one per instance, or null) and the method\'s parameters')


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: list[Any] = Field(default_factory=list, description="the texts the causal LM continues, one per prompt")
    messages: list[Any] | None = Field(None, description='instead of prompts: a chat ([{"role", "content"}, ...]: '
                                       'system / user / assistant turns) or a list of chats, through the chat template')
    parameters: dict[str, Any] = Field(default_factory=dict, description='"targets" (continuations to explain '
                                       'by teacher forcing), "max_new_tokens", "method", "steps", "baseline", "quality"')


def parsed(kind: type[BaseModel], body: bytes) -> BaseModel:
    """A JSON body read as ``kind`` in one pass (pydantic's own JSON parser), its errors those of a
    FastAPI body parameter (422, one line)."""
    try:
        return kind.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def body_schema(kind: type[BaseModel]) -> dict:
    """The OpenAPI request body of a route that reads its body itself: ``kind`` as JSON, or KServe V2's
    binary tensor body (`explain.service.binary`)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": kind.model_json_schema()},
        binary.OCTET_STREAM: {"schema": {"type": "string", "format": "binary",
                                         "description": "a JSON header, then the tensor's bytes (its length in "
                                                        "the Inference-Header-Content-Length header)"}}}}}


class JobBody(ExplainBody):
    model: str = Field(..., description="NAME, NAME@vN or NAME@ALIAS")
    priority: str = Field("batch", description='"batch" or "interactive"')


def generates_alone(parameters: dict[str, Any]) -> bool:
    """Whether a ``:generate`` request is a job of its own, never batched with others: sampled (a prompt is
    drawn with seed + its place in its job), or with a parameter given per prompt (a list: ``targets``,
    ``messages``, ...; ``views`` is a list of what each prompt's answer holds, not one item per prompt)."""
    return "sampling" in parameters or any(isinstance(v, list) for k, v in parameters.items() if k != "views")


def generation_rows(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """A `generation_answer` (lists, one item per prompt; ``texts`` None without a spec) cut into one
    answer per prompt."""
    n = len(answer["generated_ids"])
    return [{k: None if v is None else v[i] for k, v in answer.items()} for i in range(n)]


def joined_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`generation_rows`' inverse: one answer of the prompts ``rows`` holds, in their order."""
    return {k: None if all(r[k] is None for r in rows) else [r[k] for r in rows] for k in rows[0]}


@contextmanager
def bad_request():
    """A request that does not fit its model (shape, target class) is the caller's to fix: the
    `IncompatibleInput` its check raises becomes a `UsageError` (400, `explain.errors.CODES`)."""
    try:
        yield
    except IncompatibleInput as exc:
        raise UsageError(exc.reason, exc.hint) from None


def check_explain(model: LoadedModel, name: str, version: int, instances: Any, parameters: dict[str, Any]
                  ) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """An explain request checked against ``model`` before it is queued (`runners.explain_job`: the
    method exists and fits the model, its parameters' types and ranges, the instances' shape; and
    here the target classes' range, `resolve_targets`): the job's params, arrays and title.

    Raises:
        UsageError: anything in the request that does not fit (HTTP 400).
    """
    from explain.output.methods.common import resolve_targets

    x = model_array(model, instances)  # [N, *input_shape]
    with bad_request():
        params, arrays, title = explain_job(model, name, version, x, parameters)
        if params["target"] is not None:  # the classes' count from the spec, else from one row's logits [1, K]
            logits = None if model.spec.num_classes else model.predict_logits(x[:1])
            resolve_targets(model, model.as_tensor(x), params["target"], logits)
    return params, arrays, title


#: formats Glassbox rebuilds into a registered architecture, its own code: a row's answer depends on that row
#: alone, so concurrent callers' rows may run as one batch
SHARED_BATCH_FORMATS = ("safetensors", "state_dict", "checkpoint")


def predict_key(actor: Actor, name: str, version: int, model: LoadedModel) -> tuple:
    """The `Batcher` key of a ``:predict``: the version's, shared by every caller, for a model of Glassbox's own
    code (`SHARED_BATCH_FORMATS`); with the caller for a user's graph (TorchScript, ``.pt2``, Hugging Face, a
    pickle), which may mix a batch's rows (``x.mean(0)``) and so answer one caller with another's inputs."""
    key = ("predict", name, version)
    return key if model.format in SHARED_BATCH_FORMATS and model.process is None else (*key, actor)


def create_app(ws: Workspace, *, worker: bool | None = None, max_jobs: int | None = None,
               max_body: int | None = None, max_buffered: int | None = None,
               explain_timeout_s: float = 600.0, batch_rows: int | None = None,
               delay_ms: float | None = None) -> FastAPI:
    """The API on ``ws``. ``worker``: start the embedded queue worker (default: unless
    ``GLASSBOX_EXTERNAL_WORKER=1``). ``max_body`` / ``max_buffered``: one request's body and the
    bytes held across all requests in flight (defaults `api_max_body_bytes`, `api_max_buffered_bytes`).
    ``batch_rows`` / ``delay_ms``: dynamic batching's most rows per engine batch and longest wait
    (defaults `config.max_batch_rows`, `config.max_delay_ms`; ``delay_ms=0``: none)."""
    app = FastAPI(title="Glassbox API", version="1",
                  description="Predictions and explanations of the workspace's registered models "
                              "(KServe V1 data plane), through the workspace's job queue.")
    # the request threads' own models (forward passes only), apart from the process's one cache that its
    # worker hooks (`shared_models`): an attribution's hooks never meet a prediction's forward pass
    models = ModelCache(ws, store=ModelStore(size=8))
    lookups = app.state.lookups = Lookups(ws)  # tokens and versions, while the workspace is unchanged
    batcher = app.state.batcher = Batcher(batch_rows if batch_rows is not None else max_batch_rows(),
                                          (delay_ms if delay_ms is not None else max_delay_ms()) / 1000)
    bearer = HTTPBearer(auto_error=False)

    from explain.service.worker import recover_now, start_embedded

    recover_now(ws)  # as the server starts: jobs a killed server of this host left "running" are queued again
    if worker if worker is not None else not external_worker():
        app.state.worker = start_embedded(ws)

    # -- errors: one line, never a traceback ------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _apierror_response(_request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(GlassboxError)
    async def _glassboxerror_response(_request, exc: GlassboxError):
        return error_response(http_status(exc), exc.message)  # the one table: explain.errors.CODES

    @app.exception_handler(RequestValidationError)
    async def _validation(_request, exc: RequestValidationError):
        errors = exc.errors()
        if errors:
            first = errors[0]
            if first.get("type") == "json_invalid":
                return error_response(422, f"The body is not JSON ({first.get('ctx', {}).get('error', 'invalid')}).")
            where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
            return error_response(422, f"{where}: {first.get('msg', 'invalid')}")
        return error_response(422, "The request body is not valid.")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))  # 405's Allow

    # innermost: ``:predict`` straight to its endpoint, past FastAPI's routing (filled as it is defined)
    action_routes: dict = {}
    app.add_middleware(ActionRoutes, routes=action_routes, handlers=app.exception_handlers)
    app.add_middleware(OneLineErrors)

    # outermost (added last): the token is checked before any body is read, and bodies are capped
    public = frozenset(p for p in (app.openapi_url, app.docs_url, app.redoc_url,
                                   app.swagger_ui_oauth2_redirect_url) if p)
    app.add_middleware(Gate, identify=lookups.identity, identify_soon=lookups.identity_soon, public=public,
                       limit=max_body if max_body is not None else api_max_body_bytes(),
                       budget=max_buffered if max_buffered is not None else api_max_buffered_bytes())

    # -- who is asking --------------------------------------------------------------------------------
    async def caller(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Actor:
        checked = request.scope.get("state", {}).get("glassbox_token")
        if checked is not None:  # `Gate` looked the token up already
            return Actor(checked, token=True)
        return await token_caller(credentials)

    async def gated_caller(request: Request) -> Actor:
        """`caller` without FastAPI's dependency resolution (~0.05 ms a request): for the hot route."""
        checked = request.scope.get("state", {}).get("glassbox_token")
        return Actor(checked, token=True) if checked is not None else await token_caller(await bearer(request))

    async def token_caller(credentials: HTTPAuthorizationCredentials | None) -> Actor:
        if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
            raise ApiError(401, "Missing token: send Authorization: Bearer <token>.")
        found = await anyio.to_thread.run_sync(lookups.identity, credentials.credentials)
        if found is None:
            raise ApiError(401, "Unknown token.")
        return Actor(found.name, token=True)

    def require(actor: Actor, action: Action) -> None:
        with ws.core.db.transaction() as s:
            ws.core.require(s, actor, action)

    def version_of(request: Request, actor: Actor, ref: str):
        """The version ``ref`` names, under the workspace stamp the request's token was checked at (if
        that was a moment ago: `Lookups.version`)."""
        state = request.scope.get("state", {})
        return lookups.version(actor, ref, state.get("glassbox_stamp"), state.get("glassbox_checked"))

    def job_json(job: JobInfo) -> dict:
        return {"job": job.id, "kind": job.kind, "title": job.title, "owner": job.owner, "priority": job.priority,
                "status": job.status, "progress": job.progress, "run": job.run, "error": job.error,
                "attempts": job.attempts, "created": job.created, "started": job.started, "finished": job.finished}

    def submit(request: Request, actor: Actor, ref: str, body: ExplainBody, priority: str) -> JobInfo:
        require(actor, Action.SAVE_RUN)  # before any model is loaded for this caller
        info = version_of(request, actor, ref)
        model = models.load(actor, info)
        params, arrays, title = check_explain(model, info.name, info.version, body.instances, body.parameters)
        return submit_job(ws, actor, "explain", params, title=title, inputs=arrays, priority=priority,
                          max_active=max_jobs)  # None: the one per-caller limit, GLASSBOX_MAX_JOBS

    def waited(actor: Actor, job: JobInfo) -> tuple[JobInfo, SavedRun]:
        """An interactive job waited for, and its saved run (504 after ``explain_timeout_s``)."""
        try:
            job = wait(ws, actor, job.id, timeout_s=explain_timeout_s)
            return job, finished_run(ws, actor, job)
        except TimeoutError:
            raise ApiError(504, f"Job {job.id} did not finish in {explain_timeout_s:.0f} s; "
                                f"follow it at /v1/jobs/{job.id}.") from None
        except JobNotDone as exc:
            raise ApiError(409 if exc.job.status == "cancelled" else 422, exc.message) from None

    def answered(actor: Actor, job: JobInfo) -> tuple[dict, list[dict]]:
        """An interactive job waited for: the answer's run, job and method, and one explanation per row."""
        job, run = waited(actor, job)
        (attr,) = read_run(run)  # an Output run of one method: its Attribution, as the run saved it
        values, targets, errors = attr.values, attr.target, attr.completeness_error
        return {"run": run.info.id, "job": job.id, "method": run.info.method}, [
            {"values": values[i].tolist(), "target": int(targets[i]),
             "completeness_error": None if errors is None or not np.isfinite(errors[i]) else float(errors[i])}
            for i in range(len(values))]

    def explanations(rows: list[dict], meta: dict, run_rows: list[int]) -> Response:
        """An ``:explain`` answer, written by orjson (FastAPI's encoder walks every number of every map)."""
        return Response(orjson.dumps({"explanations": rows, **meta, "run_rows": run_rows}),
                        media_type="application/json")

    # -- models ---------------------------------------------------------------------------------------
    @app.get("/v1/models", summary="The registered models")
    def list_models(actor: Actor = Depends(caller)) -> dict:
        versions = ws.registry.list(actor)
        names = sorted({v.name for v in versions})
        return {"models": names}

    def version_model(request: Request, actor: Actor, ref: str) -> tuple[VersionInfo, LoadedModel]:
        info = version_of(request, actor, ref)
        return info, models.load(actor, info)

    async def version_model_soon(request: Request, actor: Actor, ref: str) -> tuple[VersionInfo, LoadedModel]:
        """`version_model` from the event loop: what the lookups and the models remember, read there (the
        requests of a version in use), else a thread reads the database and the file."""
        state = request.scope.get("state", {})
        info = lookups.remembered_version(actor, ref, state.get("glassbox_stamp"), state.get("glassbox_checked"))
        model = None if info is None else models.loaded(info)
        if model is not None:
            return info, model
        return await anyio.to_thread.run_sync(version_model, request, actor, ref)

    def given_rows(request: Request, kind: type[BaseModel]) -> BaseModel | None:
        """A ``:predict`` / ``:explain`` request's JSON body read (malformed: 422, before any lookup);
        None for a binary body (`explain.service.binary`), read once its model is known (`model_rows`)."""
        body = request.scope["state"]["glassbox_body"]  # read whole by the `Gate`
        return None if binary.is_binary(request.headers) else parsed(kind, body)

    def model_rows(request: Request, model: LoadedModel, given: BaseModel | None):
        """The request's rows ``[N, *input_shape]`` for ``model``, parameters and, for a binary body,
        whether to answer in bytes (None: a JSON body)."""
        if given is not None:
            return model_array(model, given.instances), getattr(given, "parameters", {}), None
        rows, parameters, binary_output = binary.read_request(request.scope["state"]["glassbox_body"],
                                                              request.headers, tuple(model.spec.input_shape))
        return model_array(model, rows), parameters, binary_output

    def request_rows(request: Request, actor: Actor, name: str, kind: type[BaseModel]):
        """A ``:predict`` / ``:explain`` request's version, model, rows ``[N, *input_shape]``, parameters
        and, for a binary body (`explain.service.binary`), whether to answer in bytes (None: a JSON body)."""
        given = given_rows(request, kind)
        info, model = version_model(request, actor, name)
        return info, model, *model_rows(request, model, given)

    @app.post("/v1/models/{name}:predict", summary="Class probabilities per instance",
              openapi_extra={**body_schema(Instances), "security": [{"HTTPBearer": []}]})
    async def predict(name: str, request: Request) -> Response:
        actor = await gated_caller(request)
        # in the event loop: a thread only for what is not remembered, and one per engine batch (`Batcher.arun`)
        given = given_rows(request, Instances)
        info, model = await version_model_soon(request, actor, name)
        x, _, binary_output = model_rows(request, model, given)  # x [N, *input_shape]
        if tuple(x.shape[1:]) != tuple(model.spec.input_shape):  # checked before the rows join a batch
            with bad_request():
                model.as_tensor(x)  # its one message of a shape this model does not take
        try:  # with the concurrent requests of this version: one engine batch, these rows back
            probs = await batcher.arun(predict_key(actor, info.name, info.version, model), x, model.predict_proba)  # [N, K]
        except GlassboxError:
            raise
        except Exception as exc:
            raise ApiError(422, f"The model could not run these instances ({one_line(exc)}).") from None
        if binary_output is None:  # the response built here: FastAPI's encoder walks every number (~0.1 ms)
            return Response(orjson.dumps({"predictions": probs.tolist(), "model": info.ref}),
                            media_type="application/json")
        content, headers = binary.answer(info.name, info.version, {binary.OUTPUT: probs}, binary_output)
        return Response(content, headers=headers)

    action_routes["predict"] = predict

    @app.post("/v1/models/{name}:explain", summary="Attributions, computed as an interactive job and saved as a run",
              openapi_extra={**body_schema(ExplainBody), "security": [{"HTTPBearer": []}]})
    async def explain(name: str, request: Request) -> Response:
        actor = await gated_caller(request)

        def checked() -> tuple:  # the role, the version, the rows and the request checked (400): one thread hop
            require(actor, Action.SAVE_RUN)  # before any model is loaded for this caller
            info, model, instances, parameters, binary_output = request_rows(request, actor, name, ExplainBody)
            if binary_output is not None and not parameters:  # a binary body's, as ExplainBody's default
                parameters = {"method": "integrated_gradients"}
            return info, model, parameters, *check_explain(model, info.name, info.version, instances, parameters)

        info, model, parameters, params, arrays, title = await anyio.to_thread.run_sync(checked)
        x = arrays["inputs"]  # [N, *input_shape]
        if len(x) > 1 or set(arrays) != {"inputs"}:  # several rows, or array parameters: a job of its own
            meta, rows = await anyio.to_thread.run_sync(lambda: answered(actor, submit_job(
                ws, actor, "explain", params, title=title, inputs=arrays, priority="interactive", max_active=max_jobs)))
            return explanations(rows, meta, list(range(len(rows))))
        target = params["target"][0] if isinstance(params["target"], list) else params["target"]
        given = {**parameters, "target": target}

        def explain_rows(rows: np.ndarray) -> np.ndarray:  # rows [n, *input_shape] -> n answers
            p, a, t = check_explain(model, info.name, info.version, rows, given)
            out = np.empty(len(rows), dtype=object)
            try:
                meta, answers = answered(actor, submit_job(ws, actor, "explain", p, title=t, inputs=a,
                                                           priority="interactive", max_active=max_jobs))
            except ApiError as exc:
                if exc.status == 422:  # the job failed, maybe for one row: the batcher runs each alone
                    raise
                out[:] = [exc] * len(rows)  # timed out or cancelled: every member's answer, not run again
                return out
            out[:] = [(meta, i, answer) for i, answer in enumerate(answers)]
            return out

        # one-row requests of this caller, version, method, parameters and target: one job together, the
        # requests waiting in the event loop, one worker thread per batch submitting and waiting (`Batcher.arun`)
        key = ("explain", actor.name, info.name, info.version, target,
               json.dumps(params["methods"], sort_keys=True, default=str))
        (answered_row,) = await batcher.arun(key, x, explain_rows)
        if isinstance(answered_row, ApiError):
            raise answered_row
        meta, row, answer = answered_row
        return explanations([answer], meta, [row])

    @app.post("/v1/models/{name}:generate",
              summary="A causal LM's continuations, each token attributed; an interactive job saved as a run")
    def generate(name: str, body: GenerateBody, request: Request, actor: Actor = Depends(caller)) -> dict:
        require(actor, Action.SAVE_RUN)  # before any model is loaded for this caller
        info = version_of(request, actor, name)
        model = models.load(actor, info)
        with bad_request():  # checked before anything is queued: 400, no job
            params, arrays, title = generation_request(model, info.name, info.version, body.prompts, body.parameters,
                                                       messages=body.messages)
        if generates_alone(body.parameters) or body.messages is not None:  # sampled (seed + its place), chats,
            # or given per prompt: a job of its own
            job, run = waited(actor, submit_job(ws, actor, GENERATE_JOB, params, title=title, inputs=arrays,
                                                priority="interactive", max_active=max_jobs))
            answer = generation_answer(read_run(run))
            return {**answer, "run": run.info.id, "job": job.id, "method": run.info.method,
                    "run_rows": list(range(len(answer["generated_ids"])))}

        def generate_rows(prompts: np.ndarray) -> np.ndarray:  # prompts [n] (texts) -> n answers
            with bad_request():
                p, a, t = generation_request(model, info.name, info.version, list(prompts), body.parameters)
            out = np.empty(len(prompts), dtype=object)
            try:
                job, run = waited(actor, submit_job(ws, actor, GENERATE_JOB, p, title=t, inputs=a,
                                                    priority="interactive", max_active=max_jobs))
            except ApiError as exc:
                if exc.status == 422:  # the job failed, maybe for one prompt: the batcher runs each alone
                    raise
                out[:] = [exc] * len(prompts)  # timed out or cancelled: every member's answer, not run again
                return out
            meta = {"run": run.info.id, "job": job.id, "method": run.info.method}
            out[:] = [(meta, i, row) for i, row in enumerate(generation_rows(generation_answer(read_run(run))))]
            return out

        # greedy requests of this caller, version and parameters: their prompts generated in one job together
        prompts = np.empty(len(body.prompts), dtype=object)  # [n] texts (checked above)
        prompts[:] = body.prompts
        key = ("generate", actor.name, info.name, info.version, json.dumps(body.parameters, sort_keys=True))
        answered_rows = batcher.run(key, prompts, generate_rows)
        for answered_row in answered_rows:
            if isinstance(answered_row, ApiError):
                raise answered_row
        meta = answered_rows[0][0]
        return {**joined_rows([row for _, _, row in answered_rows]), **meta,
                "run_rows": [i for _, i, _ in answered_rows]}

    @app.api_route("/v1/models/{name}:{action}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
                   include_in_schema=False)
    def other_action(name: str, action: str, request: Request) -> dict:
        if action in ACTIONS:  # the route exists; the verb is not its POST
            raise ApiError(405, f"{request.method} is not allowed on :{action}; use POST.", {"Allow": "POST"})
        raise ApiError(404, f"No action {action!r} on models; the actions are "
                            f"{', '.join(':' + a for a in ACTIONS)}.")

    # after the action routes: ``GET NAME:predict`` is 405, not a model named "NAME:predict"
    @app.get("/v1/models/{name}", summary="One model version: NAME, NAME@vN or NAME@ALIAS")
    def get_model(name: str, request: Request, actor: Actor = Depends(caller)) -> dict:
        info = version_of(request, actor, name)
        return {"name": info.name, "version": info.version, "ref": info.ref, "ready": True,
                "sha256": info.sha256, "aliases": info.aliases, "tags": info.tags, "decision": info.decision}

    # -- jobs -----------------------------------------------------------------------------------------
    @app.post("/v1/jobs", status_code=202, summary="Queue an explanation; its result becomes a saved run")
    def create_job(body: JobBody, request: Request, actor: Actor = Depends(caller)) -> dict:
        if body.priority not in ("batch", "interactive"):
            raise ApiError(422, "priority must be \"batch\" or \"interactive\".")
        return {"job": submit(request, actor, body.model, body, body.priority).id}

    @app.get("/v1/jobs/{job_id}", summary="A job's status, progress and run")
    def get_job(job_id: str, actor: Actor = Depends(caller)) -> dict:
        return job_json(ws.jobs.get(actor, job_id))

    @app.delete("/v1/jobs/{job_id}", summary="Cancel a job (its owner or an admin)")
    def cancel_job(job_id: str, actor: Actor = Depends(caller)) -> dict:
        return job_json(ws.jobs.cancel(actor, job_id))

    app.state.workspace = ws
    return app
