"""A causal LM's generation explained as a job of the queue (issue 22, item 6): the ``generation`` run a
``generate`` job saves holds exactly what ``python -m explain generate`` writes to G.npz and what the
library computes, read back by its kind's reader; it is commented on and decided on like any run
(SQLite and PostgreSQL); the request is checked before anything is queued. Uses the shipped keycopy
sample (a 2-layer Llama, its zip loaded in its own model process)."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from causal_models import one_thread  # noqa: E402, F401 - a fixture

from explain.errors import Cancelled, IncompatibleInput, UsageError  # noqa: E402
from explain.generation.attribution import attribute_generation  # noqa: E402
from explain.generation.greedy import generate_greedy  # noqa: E402
from explain.generation.job import generation_job, run_generation_job, saved_generation  # noqa: E402
from explain.generation.prompts import encode_texts  # noqa: E402
from explain.generation.quality import generation_quality  # noqa: E402
from explain.service.client import finished_run, register_model, run_here, submit  # noqa: E402
from explain.workspace import Actor  # noqa: E402
from explain.workspace.run_kinds import read_run  # noqa: E402
from sample_models import keycopy, load_sample, sample_file  # noqa: E402

pytest_plugins = ["tests.workspace_db"]
pytestmark = pytest.mark.usefixtures("one_thread")

OP = Actor("cli:tester", operator=True)
PROMPTS = keycopy.make_prompts(2, 31)[0]
NEW, STEPS = 3, 8


@pytest.fixture(scope="module")
def model():
    return load_sample("keycopy")


def _saved(ws, model, prompts=PROMPTS, **asked):
    version = register_model(ws, OP, model, sample_file("keycopy").read_bytes(), "keycopy.zip", "keycopy")
    params, arrays, title = generation_job(model, version.name, version.version, prompts, **asked)
    job = submit(ws, OP, "generate", params, title=title, inputs=arrays, priority="interactive")
    return finished_run(ws, OP, run_here(ws, job.id, loaded=model))


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    """What ``python -m explain generate`` writes (G.npz's arrays) and what the library computes (the
    attributions, the second text's quality) on `PROMPTS`, once."""
    from explain.cli import main

    folder = tmp_path_factory.mktemp("generate_cli")
    (folder / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    assert main(["generate", "keycopy", "--prompts", str(folder / "p.txt"), "--max-new-tokens", str(NEW),
                 "--steps", str(STEPS), "--out", str(folder / "g.npz")]) == 0
    with np.load(folder / "g.npz") as g:
        cli = {key: g[key] for key in g.files}
    texts = generate_greedy(model, encode_texts(PROMPTS, model.spec), NEW)
    want = attribute_generation(model, texts, "integrated_gradients", STEPS, "pad")
    return cli, want, generation_quality(model, want[1], replace="pad")


def test_a_generation_run_equals_the_cli_and_the_library_and_is_reviewed_like_any_run(workspace, model, reference):
    cli, want, judged = reference
    run = _saved(workspace, model, max_new_tokens=NEW, steps=STEPS, quality=True)
    assert run.info.page == "generation" and run.spec == model.spec  # drawn again without loading the model
    for key in ("input_ids", "prompt_length", "generated_ids", "values", "logprobs", "completeness_error"):
        np.testing.assert_array_equal(run.results[key], cli[key], err_msg=key)

    got = saved_generation(run)
    assert read_run(run).forced is False and len(got.attributions) == 2
    for g, w in zip(got.attributions, want):
        np.testing.assert_array_equal(g.input_ids, w.input_ids)
        np.testing.assert_array_equal(g.values, w.values)
        np.testing.assert_array_equal(g.logprobs, w.logprobs)
        np.testing.assert_array_equal(g.completeness_error, w.completeness_error)
        assert g.prompt_length == w.prompt_length and g.params == w.params
        assert (g.params["steps"], g.params["baseline"], g.params["tolerance"]) == (STEPS, "pad", 0.01)
    answers = keycopy.make_prompts(2, 31)[1]
    assert [a.generated_ids[0] for a in got.attributions] == [keycopy.VOCABULARY.index(a) for a in answers]
    assert [t.split()[0] for t in run.info.summary["texts"]] == answers  # the key colour, copied
    assert set(got.quality[1]) == set(judged) == {"comprehensiveness", "sufficiency", "deletion", "insertion"}
    for name, result in judged.items():
        np.testing.assert_array_equal(got.quality[1][name].per_input, result.per_input)

    comment = workspace.review.post(OP, run.info.id, "the key colour carries the answer")
    assert [c.body for c in workspace.review.comments(OP, run.info.id)] == [comment.body]
    decision = workspace.review.decide(OP, run.info.model, run.info.version, "approve", "copies the key")
    assert decision.verdict == "approve"
    threads = workspace.review.threads(OP, "keycopy", run.info.version)
    assert [(t.root.run_id, t.run_title) for t in threads] == [(run.info.id, run.info.title)]


def test_a_run_keeps_the_selected_steps_lens_attention_and_contrast_equal_to_the_live_computation(workspace, model):
    """What the Generate page computes live for the selected step (the logit lens at the position predicting it,
    the attention rows per layer and head with the rollout, the contrast) is what the run keeps, exactly."""
    from explain.generation.attention import causal_rollout, text_attention
    from explain.generation.explained import LENS_TOP_K
    from explain.generation.logit_lens import logit_lens
    from explain.generation.occlusion import contrast_texts

    run = _saved(workspace, model, max_new_tokens=NEW, method="saliency", selected_step=1, contrast=" red")
    assert (run.info.params["selected_step"], run.info.params["contrast"]) == (1, keycopy.VOCABULARY.index("red"))
    got = saved_generation(run)
    texts = generate_greedy(model, encode_texts(PROMPTS, model.spec), NEW)
    for attr, views, text in zip(got.attributions, got.views, texts):
        p, ids = attr.prompt_length, attr.input_ids
        lens = logit_lens(model, [ids[:-1]], top_k=LENS_TOP_K)  # as explain_prompt reads it
        np.testing.assert_array_equal(views.lens_ids, lens.top_ids[0][:, p - 1:])  # [layers + 1, T, k]
        np.testing.assert_array_equal(views.lens_probs, lens.top_probs[0][:, p - 1:])
        maps = text_attention(model, ids)  # as the page's _text_attention reads it
        rollout = causal_rollout(maps.weights)[0]
        assert views.selected == 1 and views.steps.tolist() == [1, 2, 0]  # the selected step first
        for row, step in enumerate(views.steps):
            np.testing.assert_array_equal(views.attention[:, :, row], maps.weights[:, 0, :, p + step - 1])
            np.testing.assert_array_equal(views.rollout[row], rollout[p + step - 1])
        want = contrast_texts(model, [text], [keycopy.VOCABULARY.index("red")], 1, "saliency")[0]
        c = views.contrast
        np.testing.assert_array_equal(c.values, want.values)
        np.testing.assert_array_equal(c.context_ids, want.context_ids)
        assert (c.step, c.token, c.alternative, c.difference) == (1, want.token, want.alternative, want.difference)
        assert np.isnan(c.completeness_error)  # saliency defines none: null in the run, NaN read back
    with pytest.raises(UsageError, match="selected_step must be 0 .. 2"):
        generation_job(model, "keycopy", 1, PROMPTS, max_new_tokens=NEW, selected_step=3)
    with pytest.raises(UsageError, match="A contrast is attributed by"):
        generation_job(model, "keycopy", 1, PROMPTS, method="deeplift", contrast=" red")
    with pytest.raises(UsageError, match="The contrast is 2 tokens"):
        generation_job(model, "keycopy", 1, PROMPTS, contrast=" red blue")


def test_the_kept_attention_is_bounded_and_says_so():
    from explain.generation.step_views import MAX_ATTENTION_STEPS, attention_steps

    assert attention_steps(2, 20, 2**20, 8 * 2**20) == [2, 3, 4, 5, 6, 7, 8, 9]  # the selected, then after it
    assert attention_steps(18, 20, 2**20, 8 * 2**20) == [18, 19, 17, 16, 15, 14, 13, 12]  # then before it
    assert attention_steps(5, 20, 3 * 2**20, 8 * 2**20) == [5, 6]  # 8 MiB hold two 3 MiB steps
    assert attention_steps(5, 20, 64 * 2**20, 8 * 2**20) == [5]  # the selected step always
    assert attention_steps(9, 3, 1, 8 * 2**20) == [2, 1, 0] and attention_steps(0, 0, 1) == []
    assert len(attention_steps(0, 100, 1)) == MAX_ATTENTION_STEPS


def test_the_views_an_answer_holds_are_bounded_and_say_so():
    """`views_answer` holds at most ``most`` numbers a view: the lens from the selected step on, the kept attention
    steps that fit (none: the selected step's rollout row only), each cut said in a note; a model without layers
    (a .pt2) answers null lens and attention."""
    from explain.generation.step_views import StepViews, views_answer

    lens_ids = np.arange(24).reshape(3, 4, 2)  # [layers + 1, T, k]
    attention = np.arange(60, dtype=np.float32).reshape(2, 2, 3, 5)  # [layers, heads, S, L]
    views = StepViews(3, lens_ids, lens_ids / 100, np.asarray([2, 3, 1]), attention, np.arange(15.0).reshape(3, 5))
    asked = ("logit_lens", "attention")
    small = views_answer(views, asked, None, most=12)  # 2 lens steps of 6 entries; one attention step is 20
    assert small["logit_lens"]["steps"] == [2, 3] and small["logit_lens"]["top_ids"] == lens_ids[:, 2:].tolist()
    assert small["logit_lens"]["top_tokens"] is None and small["attention"]["weights"] is None
    assert small["attention"]["steps"] == [2] and small["attention"]["rollout"] == [[0.0, 1.0, 2.0, 3.0, 4.0]]
    assert small["notes"] == ["Logit lens answered for 2 of 4 steps (at most 12 entries).",
                              "Attention answered for 0 of the 3 kept steps (at most 12 weights); the rollout of the "
                              "selected step only."]
    wide = views_answer(views, asked, None, most=40)
    assert wide["logit_lens"]["steps"] == [0, 1, 2, 3] and wide["attention"]["steps"] == [2, 3]
    assert wide["attention"]["weights"] == attention[:, :, :2].tolist() and len(wide["notes"]) == 1
    assert set(views_answer(views, ["contrast"], None)) == {"contrast", "notes"}
    logits_only = StepViews(3, np.zeros((0, 4, 2), np.int64), np.zeros((0, 4, 2)), np.asarray([1]),
                            np.zeros((0, 0, 1, 5)), np.zeros((1, 5)), notes=["logits only"])
    assert views_answer(logits_only, asked, None) == {"logit_lens": None, "attention": None, "notes": ["logits only"]}
    assert views_answer(None, asked, None) is None

#: keycopy's worst completeness at 128 steps (0.41 on its third token; seed 1's sixth prompt, issue 22)
WORST = "key yellow . the door and a black cup is"


def test_integrated_gradients_raise_steps_only_for_the_tokens_over_the_tolerance(model, monkeypatch):
    """The completeness tolerance doubles the steps of the generated tokens above it, alone, within the budget of
    every IG (GLASSBOX_IG_STEP_BUDGET x the asked steps, GLASSBOX_IG_STEP_SECONDS), and records it as a classifier
    run does; the tokens not raised keep the fixed steps' values exactly, and the record computes it again exactly."""
    from explain.generation.occlusion import attribute_texts

    monkeypatch.delenv("GLASSBOX_IG_STEP_BUDGET", raising=False)
    monkeypatch.delenv("GLASSBOX_IG_STEP_SECONDS", raising=False)
    texts = generate_greedy(model, encode_texts([WORST], model.spec), 3)
    fixed = attribute_texts(model, texts, "integrated_gradients", 128, "pad", tolerance=0)[0]
    assert fixed.completeness_error.max() > 0.4 and "per_token" not in fixed.params
    got = attribute_texts(model, texts, "integrated_gradients", 128, "pad")[0]  # tolerance 0.01, at most 4 x 128 steps
    assert got.completeness_error.max() <= 0.01 and got.params["tolerance"] == 0.01
    used = got.params["per_token"]["steps"]
    assert used == [256, 128, 512]  # the first and third token were over the tolerance
    kept = np.asarray(used) == 128
    np.testing.assert_array_equal(got.values[kept], fixed.values[kept])
    np.testing.assert_array_equal(got.completeness_error[kept], fixed.completeness_error[kept])
    assert got.params["step_raising"] == {"requested": 128, "limit": 512, "seconds_limit": 60.0, "most_used": 512,
                                          "raised": 2, "stopped_by": None,
                                          "max_error": pytest.approx(float(got.completeness_error.max()))}
    assert "Steps: 128 asked; the completeness tolerance raised 2 token(s), up to 512." in got.notes
    again = attribute_texts(model, texts, "integrated_gradients", 128, "pad", per_token=[used])[0]
    np.testing.assert_array_equal(again.values, got.values)  # as recorded: the same rounds, the same numbers
    np.testing.assert_array_equal(again.completeness_error, got.completeness_error)
    assert again.params["per_token"] == {"steps": used} and "step_raising" not in again.params

    monkeypatch.setenv("GLASSBOX_IG_STEP_BUDGET", "2")  # at most 256 steps: the third token stays over
    capped = attribute_texts(model, texts, "integrated_gradients", 128, "pad")[0]
    did = capped.params["step_raising"]
    assert (did["limit"], did["stopped_by"], capped.params["per_token"]["steps"]) == (256, "steps", [256, 128, 256])
    assert did["max_error"] == pytest.approx(float(capped.completeness_error.max())) and did["max_error"] > 0.01
    assert any("stopped by the step budget (256 steps at most)" in n for n in capped.notes)
    monkeypatch.delenv("GLASSBOX_IG_STEP_BUDGET")
    monkeypatch.setenv("GLASSBOX_IG_STEP_SECONDS", "1e-9")  # time for one round of raising, then the stop recorded
    stopped = attribute_texts(model, texts, "integrated_gradients", 128, "pad")[0]
    assert stopped.params["step_raising"]["stopped_by"] == "seconds"
    assert stopped.params["per_token"]["steps"] == [256, 128, 256]
    np.testing.assert_array_equal(stopped.values, capped.values)  # the same round as the step budget's


def test_a_generation_run_records_the_raised_steps_and_its_rerun_equals_it(workspace, model):
    from explain.generation.job import generation_rerun

    run = _saved(workspace, model, [PROMPTS[0], WORST], max_new_tokens=3, steps=128)
    texts = generate_greedy(model, encode_texts([PROMPTS[0], WORST], model.spec), 3)
    want = [a.params.get("per_token", {}).get("steps") for a in attribute_texts_default(model, texts)]
    assert run.info.params["per_token"] == want == [None, [256, 128, 512]]  # per prompt, each token's steps
    assert run.info.params["step_raising"]["requested"] == 128 and run.info.params["tolerance"] == 0.01
    params, arrays, title = generation_rerun(run)
    assert params["per_token"] == want and title.startswith(f"Re-run of {run.info.id}")
    job = submit(workspace, OP, "generate", params, title=title, inputs=arrays, priority="interactive")
    again = finished_run(workspace, OP, run_here(workspace, job.id, loaded=model))
    assert again.info.summary["rerun_of"] == run.info.id and again.info.params["per_token"] == want
    for key in ("input_ids", "generated_ids", "values", "logprobs", "completeness_error"):
        np.testing.assert_array_equal(again.results[key], run.results[key], err_msg=key)


def attribute_texts_default(model, texts):
    from explain.generation.occlusion import attribute_texts

    return attribute_texts(model, texts, "integrated_gradients", 128, "pad")


def test_a_given_continuation_is_saved_teacher_forced(workspace, model):
    run = _saved(workspace, model, continuations=[" red .", " blue"], method="saliency")
    got = read_run(run)
    assert got.forced and run.info.params["max_new_tokens"] == 0 and run.info.method == "saliency"
    assert [len(a.generated_ids) for a in got.attributions] == [2, 1]
    assert list(run.results["generated_ids"][1]) == [keycopy.VOCABULARY.index("blue"), -1]  # -1 past its end
    assert np.isnan(got.attributions[0].completeness_error).all()  # saliency defines none
    assert run.info.summary["texts"] == ["red .", "blue"]


def test_an_occlusion_job_by_word_equals_the_librarys_occlusion(workspace, model):
    from explain.generation.occlusion import occlude_generation

    run = _saved(workspace, model, max_new_tokens=1, method="occlusion", baseline="unk", granularity="word")
    assert (run.info.params["baseline"], run.info.params["granularity"]) == ("unk", "word")
    texts = generate_greedy(model, encode_texts(PROMPTS, model.spec), 1)
    for got, want in zip(read_run(run).attributions, occlude_generation(model, texts, "word", "unk")):
        np.testing.assert_array_equal(got.values, want.values)
        before_is = got.values[0, : got.prompt_length - 1]  # every word but the final "is" the answer follows
        assert before_is.argmax() == keycopy.KEY_POSITION and before_is.max() > 1  # removing the key hurts most


def test_a_sampled_job_draws_what_one_batch_of_every_prompt_draws_and_a_chat_job_renders_its_template(model):
    from explain.generation.chat import render_chat
    from explain.generation.job import generation_request, unpadded_ids
    from explain.generation.sampling import Sampling, generate_sampled

    drawn = Sampling(temperature=1.5, seed=3)
    params, arrays, _ = generation_request(model, "keycopy", 1, PROMPTS, {
        "max_new_tokens": 3, "method": "saliency", "sampling": drawn.to_dict()})
    record = run_generation_job(model, params, arrays)
    want = generate_sampled(model, encode_texts(PROMPTS, model.spec), 3, drawn)  # prompt i: seed 3 + i
    assert record.params["sampling"] == drawn.to_dict()
    for i, w in enumerate(want):
        np.testing.assert_array_equal(unpadded_ids(record.results["generated_ids"])[i], w.generated_ids)
        np.testing.assert_array_equal(record.results["logprobs"][i, : w.logprobs.size], w.logprobs)

    params, arrays, _ = generation_job(model, "keycopy", 1, PROMPTS[:1], max_new_tokens=1, method="saliency", chat=True)
    rendered = render_chat(model, [[{"role": "user", "content": PROMPTS[0]}]])
    assert params["chat"] and unpadded_ids(arrays["prompt_ids"])[0].tolist() == \
        encode_texts(rendered, model.spec, special_tokens=False)[0].tolist()
    with pytest.raises(UsageError, match="sampling takes"):
        generation_request(model, "keycopy", 1, PROMPTS, {"sampling": {"heat": 2}})


def test_a_request_is_checked_before_it_is_queued(model):
    from explain.loading.loader import load_model
    from sample_models import sample_file as file_of

    with pytest.raises(UsageError, match="non-empty"):
        generation_job(model, "keycopy", 1, [])
    with pytest.raises(UsageError, match="Unknown generation method"):
        generation_job(model, "keycopy", 1, PROMPTS, method="grad_cam")
    with pytest.raises(UsageError, match="positions"):
        generation_job(model, "keycopy", 1, [" ".join(["the"] * 200)])
    with pytest.raises(UsageError, match="one text per prompt"):
        generation_job(model, "keycopy", 1, PROMPTS, continuations=["red"])
    with pytest.raises(UsageError, match="Unknown baseline 'zero' for occlusion"):
        generation_job(model, "keycopy", 1, PROMPTS, method="occlusion", baseline="zero")
    with pytest.raises(IncompatibleInput, match="causal language models"):
        generation_job(load_model(file_of("cancer")), "cancer", 1, PROMPTS)


def test_a_cancel_takes_effect_between_two_prompts(model):
    params, arrays, _ = generation_job(model, "keycopy", 1, PROMPTS, max_new_tokens=1, method="saliency")
    seen = []

    def between() -> None:
        seen.append(len(seen))
        raise Cancelled("cancelled")

    with pytest.raises(Cancelled):
        run_generation_job(model, params, arrays, between_chunks=between)
    assert seen == [0]  # after the first prompt, before the second


def test_progress_reaches_the_end_and_never_goes_back(model):
    params, arrays, _ = generation_job(model, "keycopy", 1, PROMPTS, max_new_tokens=2, method="input_x_gradient")
    marks = []
    record = run_generation_job(model, params, arrays, progress=lambda done, total: marks.append(done / total))
    assert marks[-1] == 1.0 and marks == sorted(marks) and len(marks) > 4
    assert json.dumps(record.summary)  # plain JSON


def _array(value) -> np.ndarray:
    """A plotly JSON array: a list (null = NaN), or a typed array (``{"dtype", "bdata", "shape"}``)."""
    if isinstance(value, dict):
        import base64

        shape = tuple(int(d) for d in str(value["shape"]).split(","))
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).reshape(shape).astype(float)
    return np.asarray(value, dtype=float)


def _chart(at, key: str) -> dict:
    chart = next(c for c in at.get("plotly_chart") if c.proto.id.endswith("-" + key))
    return json.loads(chart.proto.spec)["data"][0]


def test_the_generate_page_saves_a_run_its_drawer_draws_the_saved_matrix_and_its_report_has_it(home, model):
    import hashlib
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from explain.viz.generation import masked_values
    from ui.state import UploadedBlob

    _, ws = home
    app = str(Path(__file__).resolve().parent.parent / "app.py")
    data = sample_file("keycopy").read_bytes()
    at = AppTest.from_file(app, default_timeout=300)
    at.session_state["gb_source"] = "upload"
    at.session_state["gb_model_upload"] = UploadedBlob("keycopy.zip", data, hashlib.sha256(data).hexdigest())
    at.switch_page("pages/views/generate.py").run()
    at.text_area(key="gb_gen_prompt").set_value(PROMPTS[0])
    at.number_input(key="gb_gen_max_new").set_value(2)
    at.selectbox(key="gb_gen_method").set_value("saliency")
    at.checkbox(key="gb_gen_quality").set_value(False).run()
    at.button(key="gb_gen_save").click().run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    run_id = [c.value for c in at.code if "?run=" in c.value][0].rsplit("=", 1)[1]
    run = ws.runs.open(OP, run_id)
    assert (run.info.page, run.info.model, run.info.method) == ("generation", "keycopy", "saliency")

    texts = generate_greedy(model, encode_texts(PROMPTS[:1], model.spec), 2)
    want = attribute_generation(model, texts, "saliency")[0]
    got = saved_generation(run).attributions[0]
    np.testing.assert_array_equal(got.input_ids, want.input_ids)
    np.testing.assert_array_equal(got.values, want.values)

    opened = AppTest.from_file(app, default_timeout=300)
    opened.query_params["run"] = run_id
    opened.run()
    assert not opened.exception and not opened.error, [e.value for e in [*opened.exception, *opened.error]]
    drawn = _chart(opened, f"run_{run_id}_generation_matrix_0")  # the Generate page's figure, from the run
    np.testing.assert_allclose(_array(drawn["z"]), masked_values(want.values, want.prompt_length), rtol=1e-6)
    assert any(keycopy.make_prompts(2, 31)[1][0] in c.value for c in opened.code)  # the saved text
    views = saved_generation(run).views[0]  # the selected step's attention, drawn by the page's figure from the run
    attention = _chart(opened, f"run_{run_id}_generation_0_step_attention")
    p = want.prompt_length
    np.testing.assert_allclose(_array(attention["z"])[:-1], views.attention[:, :, 0, :p].reshape(-1, p), rtol=1e-6)
    np.testing.assert_allclose(_array(attention["z"])[-1], views.rollout[0, :p], rtol=1e-6)

    opened.button(key="gb_rerun").click().run()  # Re-run: the same prompts and settings as a job, compared
    assert not opened.exception and not opened.error, [e.value for e in [*opened.exception, *opened.error]]
    diff = [d.value for d in opened.dataframe if "same tokens" in d.value.columns][0]
    assert diff["same tokens"].all() and (diff["max |difference|"] == 0).all()
    (again,) = [r for r in ws.runs.list(OP) if r.summary.get("rerun_of") == run_id]
    assert again.page == "generation" and again.title.startswith(f"Re-run of {run_id}")

    opened.button(key="gb_run_report").click().run()  # the run's report, with its Generation section
    assert not opened.exception and not opened.error, [e.value for e in [*opened.exception, *opened.error]]
    (report,) = [r for r in ws.runs.list(OP) if r.page == "report"]
    assert "Generation" in report.summary["sections"] and "Generation" not in report.summary["failed"]
    # a causal LM has no inputs to map: no classifier Output section failing with 'pass --inputs'; nothing fails
    assert not [s for s in report.summary["sections"] if s.startswith("Output")] and not report.summary["failed"]


def test_a_report_built_with_a_generation_run_has_its_generation_section(home, model, reference):
    from explain.report.document import read_report_data
    from explain.report.generation import build_generation_section
    from explain.report.job import report_html, report_job

    _, ws = home
    cli, want, _ = reference
    run = _saved(ws, model, max_new_tokens=NEW, steps=STEPS, quality=True)
    section = build_generation_section(saved_generation(run), run.spec)
    assert len(section.figures) == 4  # per prompt the attribution matrix and the selected step's attention
    np.testing.assert_allclose(_array(section.figures[2].data[0].z), masked_generation(want[1]), rtol=1e-6)
    views, p = saved_generation(run).views[1], want[1].prompt_length
    np.testing.assert_allclose(_array(section.figures[3].data[0].z)[-1], views.rollout[0, :p], rtol=1e-6)
    assert "Prompt 2, selected step 1" in section.body and "embeddings" in section.body  # the logit lens's table
    for prompt, text in zip(PROMPTS, run.info.summary["texts"]):
        assert f"{prompt} <b>→ {text}</b>" in section.body.replace("&lt;", "<").replace("&gt;", ">")
    assert "Comprehensiveness" in section.body  # the quality table the run judged

    params, arrays, title = report_job(model, "keycopy", run.info.version, None, generation=run)
    job = submit(ws, OP, "report", params, title=title, inputs=arrays, priority="interactive")
    report = finished_run(ws, OP, run_here(ws, job.id, loaded=model))
    assert "Generation" in report.info.summary["sections"] and "Generation" not in report.info.summary["failed"]
    data = read_report_data(report_html(report).decode())
    shown = data["sections"]["Generation"]["texts"]
    assert [t["text"] for t in shown] == run.info.summary["texts"]
    np.testing.assert_allclose([t["logprobs"] for t in shown], cli["logprobs"], rtol=1e-5)
    with pytest.raises(UsageError, match="not a generation"):
        report_job(model, "keycopy", run.info.version, None, generation=report)


def masked_generation(attr) -> np.ndarray:
    from explain.viz.generation import masked_values

    return masked_values(attr.values, attr.prompt_length)


def test_the_keycopy_sample_is_registered_the_first_time_it_is_saved_as_a_run(home, model):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    _, ws = home
    assert ws.registry.find_by_sha(OP, model.sha256) is None  # the seed leaves the causal LM out
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=300)
    at.session_state["gb_source"] = "sample"
    at.session_state["gb_sample"] = "keycopy"
    at.switch_page("pages/views/generate.py").run()
    at.number_input(key="gb_gen_max_new").set_value(1)
    at.selectbox(key="gb_gen_method").set_value("saliency")
    at.checkbox(key="gb_gen_quality").set_value(False).run()
    at.button(key="gb_gen_save").click().run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    run_id = [c.value for c in at.code if "?run=" in c.value][0].rsplit("=", 1)[1]
    info = ws.runs.info(OP, run_id)
    assert (info.page, info.model, info.version, info.summary["texts"]) == ("generation", "keycopy", 1, ["blue"])
    assert info.summary["prompts"] == [keycopy.DEFAULT_PROMPT]  # the sample's first prompt
