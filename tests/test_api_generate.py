"""``POST /v1/models/{name}:generate`` (issue 22, item 6): a causal LM's continuations with every token's
attribution, computed as an interactive ``generate`` job of the queue and saved as a generation run; the
numbers equal the library's on the keycopy sample; a bad request is 400 with nothing queued; GET is 405."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from causal_models import one_thread  # noqa: E402, F401 - a fixture
from fastapi.testclient import TestClient  # noqa: E402

from explain.generation.attribution import attribute_generation  # noqa: E402
from explain.generation.greedy import generate_greedy  # noqa: E402
from explain.generation.prompts import encode_texts  # noqa: E402
from explain.generation.sampling import Sampling, generate_sampled  # noqa: E402
from explain.loading.loader import load_model  # noqa: E402
from explain.service.api import create_app  # noqa: E402
from explain.service.client import register_model  # noqa: E402
from explain.service.worker import start_embedded, stop_embedded  # noqa: E402
from explain.workspace import Actor, open_workspace  # noqa: E402
from sample_models import keycopy, load_sample, sample_file, sample_registry_files  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

OP = Actor("cli:tester", operator=True)
PROMPTS = keycopy.make_prompts(2, 41)[0]
NEW, STEPS = 2, 8


@pytest.fixture(scope="module")
def model():
    return load_sample("keycopy")


MASKED = "w9"  # the word the masked LM never gives (its logit -inf at every position)


class MaskedLM(torch.nn.Module):
    """ids [N, L] -> logits [N, L, 12]: an embedding's running sum through a head, ``MASKED``'s logit -inf."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = torch.nn.Embedding(12, 8), torch.nn.Linear(8, 12)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.head(torch.tanh(self.emb(ids).cumsum(1)))  # [N, L, V]
        return logits.index_fill(-1, torch.tensor([11]), float("-inf"))  # id 11: w9


def masked_lm(path) -> str:
    """`MaskedLM` exported (batch 1..8, length 1..16) as a ``.pt2`` with its word-level tokenizer.json inside."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "</s>"] + [f"w{i}" for i in range(10)]  # w9: id 11
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    dims = ({0: torch.export.Dim("batch", max=8), 1: torch.export.Dim("length", min=1, max=16)},)
    program = torch.export.export(MaskedLM().eval(), (torch.ones(2, 5, dtype=torch.long),), dynamic_shapes=dims)
    torch.export.save(program, path, extra_files={"tokenizer.json": tok.to_str()})
    return str(path)


@pytest.fixture(scope="module")
def masked(tmp_path_factory) -> tuple[str, object]:
    """The masked LM's ``.pt2`` path and the model loaded from it."""
    path = masked_lm(tmp_path_factory.mktemp("masked") / "masked.pt2")
    return path, load_model(path)


@pytest.fixture(scope="module")
def api(model, masked, tmp_path_factory):
    """A workspace with keycopy, a masked .pt2 LM (and the classifier samples) registered, its API with a worker,
    an editor's header."""
    home = tmp_path_factory.mktemp("api_generate")
    ws = open_workspace(f"sqlite:///{home / 'glassbox.db'}", home=home / "home")
    ws.seed(sample_registry_files())
    register_model(ws, OP, model, sample_file("keycopy").read_bytes(), "keycopy.zip", "keycopy")
    with open(masked[0], "rb") as fh:
        register_model(ws, OP, masked[1], fh.read(), "masked.pt2", "masked")
    client = TestClient(create_app(ws, worker=True), raise_server_exceptions=False)
    yield ws, client, {"Authorization": f"Bearer {ws.users.add_token(OP, 'editor', 'editor')}"}
    stop_embedded(ws)
    ws.close()


def test_generate_answers_the_librarys_numbers_and_saves_a_run(api, model):
    ws, client, editor = api
    response = client.post("/v1/models/keycopy:generate", headers=editor,
                           json={"prompts": PROMPTS, "parameters": {"max_new_tokens": NEW, "steps": STEPS}})
    assert response.status_code == 200, response.text
    body = response.json()
    texts = generate_greedy(model, encode_texts(PROMPTS, model.spec), NEW)
    want = attribute_generation(model, texts, "integrated_gradients", STEPS, "pad")
    assert body["generated_ids"] == [w.generated_ids.tolist() for w in want]
    assert body["input_ids"] == [w.input_ids.tolist() for w in want]
    for got, w in zip(body["attributions"], want):
        np.testing.assert_array_equal(np.asarray(got, dtype=np.float32), w.values)  # [T, P + T], exactly
    np.testing.assert_array_equal(np.asarray(body["logprobs"], dtype=np.float32), [w.logprobs for w in want])
    answers = keycopy.make_prompts(2, 41)[1]
    assert [t.split()[0] for t in body["texts"]] == answers  # the key colour, copied
    run = ws.runs.info(OP, body["run"])
    assert (run.page, run.model, run.summary["texts"]) == ("generation", "keycopy", body["texts"])
    assert ws.jobs.get_unchecked(body["job"]).kind == "generate"


@pytest.mark.parametrize(("name", "body", "says"), [
    ("keycopy", {"prompts": []}, "non-empty"),
    ("keycopy", {"prompts": [" ".join(["the"] * 200)]}, "positions"),
    ("keycopy", {"prompts": PROMPTS, "parameters": {"method": "grad_cam"}}, "Unknown generation method"),
    ("keycopy", {"prompts": PROMPTS, "parameters": {"temperature": 0.7}}, "Unknown parameter"),
    ("keycopy", {"prompts": PROMPTS, "parameters": {"steps": "8"}}, "must be an integer"),
    ("keycopy", {"prompts": PROMPTS, "parameters": {"targets": ["red"]}}, "one text per prompt"),
    ("cancer", {"prompts": PROMPTS}, "causal language models"),
    ("keycopy", {"prompts": ["  "]}, "non-empty"),
    ("keycopy", {"prompts": PROMPTS[:1], "parameters": {"max_new_tokens": 30}}, "with 30 more it exceeds the model's 32"),
    ("keycopy", {"prompts": PROMPTS[:1], "parameters": {"max_new_tokens": 10**6}}, "max_new_tokens must be 1 .. "),
    ("keycopy", {"prompts": PROMPTS[:1], "parameters": {"targets": [" ".join(["red"] * 30)]}}, "positions"),
    ("keycopy", {"prompts": PROMPTS[:1], "parameters": {"targets": [" "]}}, "has no tokens"),
    ("keycopy", {"prompts": PROMPTS, "parameters": {"contrast": "zebra"}}, "The contrast ('zebra') is not in the model's vocabulary"),
    ("keycopy", {"prompts": PROMPTS, "parameters": {"contrast": "red hat"}}, "is 2 tokens"),
    ("masked", {"prompts": ["w1 w2", "w3"], "parameters": {"targets": ["w4", "w5 w9"]}},
     "Token 2 of continuation 2 ('w9') has log-probability -inf"),
    ("masked", {"prompts": ["w1 w2"], "parameters": {"contrast": MASKED, "method": "saliency", "max_new_tokens": 2}},
     "'w9' has log-probability -inf"),
])
def test_a_bad_generate_request_is_400_and_queues_nothing(api, name, body, says):
    ws, client, editor = api
    before = len(ws.jobs.list(OP, limit=100))
    response = client.post(f"/v1/models/{name}:generate", headers=editor, json=body)
    assert response.status_code == 400, response.text
    assert says in response.json()["error"] and "\n" not in response.json()["error"]
    assert len(ws.jobs.list(OP, limit=100)) == before


def test_a_contrast_the_model_masks_at_a_later_step_is_refused_in_one_line_not_attributed_as_nan(masked):
    """Past a generation's first step the contrasted context is known only in the job: there the alternative's -inf
    log-probability (f = log p(A) - log p(B) = +inf) is refused before the grid, in the line the API's 400 gives."""
    from explain.errors import UsageError
    from explain.generation.occlusion import contrast_texts
    from explain.generation.result import GeneratedText

    text = GeneratedText(np.array([3, 4]), np.array([6, 7]), np.zeros(2))  # w1 w2 | w4 w5
    with pytest.raises(UsageError) as caught:
        contrast_texts(masked[1], [text], [11], 1, "integrated_gradients", 4, "pad", "token")
    assert str(caught.value).startswith("The alternative 'w9' has log-probability -inf there: the model never gives it")
    assert "step 1" in str(caught.value) and "\n" not in str(caught.value)


def test_generate_takes_only_post(api):
    _, client, editor = api
    response = client.get("/v1/models/keycopy:generate", headers=editor)
    assert response.status_code == 405 and response.headers["allow"] == "POST"


def _concurrently(asks: list) -> tuple[dict, list[threading.Thread]]:
    answers = {}
    threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, asks[i]())) for i in range(len(asks))]
    for t in threads:
        t.start()
    return answers, threads


def test_concurrent_greedy_generates_are_one_job_each_answered_with_its_prompts_and_sampled_ones_are_not(api, model):
    """The first greedy request's job waits (no worker), three more gather behind it and become one job
    of their four prompts; each answer is its prompts' rows of that run, equal to the library's greedy
    generation and attribution of those prompts alone. Sampled requests (prompt i drawn with seed + i)
    are a job each, so each is drawn as it would be alone."""
    ws, _, editor = api
    stop_embedded(ws)  # the module's worker: this test starts it once the requests have gathered
    app = create_app(ws, worker=False, max_jobs=100, delay_ms=10_000)
    client = TestClient(app, raise_server_exceptions=False)
    prompts = keycopy.make_prompts(5, 7)[0]
    asked = [[prompts[0]], [prompts[1]], [prompts[2], prompts[3]], [prompts[4]]]
    greedy = {"max_new_tokens": NEW, "steps": STEPS}
    sampled = {**greedy, "sampling": {"temperature": 1.5, "seed": 3}}
    jobs_before = len(ws.jobs.list(OP, limit=1000))

    def ask(texts, parameters):
        return lambda: client.post("/v1/models/keycopy:generate", headers=editor,
                                   json={"prompts": texts, "parameters": parameters})

    first, holder = _concurrently([ask(asked[0], greedy)])
    deadline = time.monotonic() + 60
    while len(ws.jobs.list(OP, limit=1000)) == jobs_before and time.monotonic() < deadline:
        time.sleep(0.01)
    answers, threads = _concurrently([ask(texts, greedy) for texts in asked[1:]]
                                     + [ask([prompts[1]], sampled), ask([prompts[4]], sampled)])
    while app.state.batcher.waiting() < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    start_embedded(ws)
    for t in [*holder, *threads]:
        t.join(300)
    assert len(ws.jobs.list(OP, limit=1000)) == jobs_before + 4  # the first's, the three greedy together, 2 sampled
    bodies = {i: answers[i].json() for i in answers}
    assert all(answers[i].status_code == 200 for i in answers), bodies
    assert first[0].status_code == 200 and first[0].json()["run_rows"] == [0]
    together = [bodies[i] for i in range(3)]
    assert len({b["run"] for b in together}) == 1
    assert sorted(r for b in together for r in b["run_rows"]) == [0, 1, 2, 3]
    for texts, body in zip(asked[1:], together):
        alone = attribute_generation(model, generate_greedy(model, encode_texts(texts, model.spec), NEW),
                                     "integrated_gradients", STEPS, "pad")
        assert body["generated_ids"] == [w.generated_ids.tolist() for w in alone]
        for got, w in zip(body["attributions"], alone):
            np.testing.assert_array_equal(np.asarray(got, dtype=np.float32), w.values)  # [T, P + T], exactly
        assert len(body["texts"]) == len(texts)
    assert bodies[3]["run"] != bodies[4]["run"] and bodies[3]["run_rows"] == bodies[4]["run_rows"] == [0]
    for i, prompt in ((3, prompts[1]), (4, prompts[4])):  # each drawn as prompt 0 of its own job: seed 3
        drawn = generate_sampled(model, encode_texts([prompt], model.spec), NEW, Sampling(temperature=1.5, seed=3))
        assert bodies[i]["generated_ids"] == [d.generated_ids.tolist() for d in drawn]


def test_only_greedy_requests_without_per_prompt_parameters_are_batched():
    from explain.service.api import generates_alone

    assert not generates_alone({}) and not generates_alone({"max_new_tokens": 2, "steps": 8, "chat": True})
    assert generates_alone({"sampling": {"seed": 1}})  # prompt i drawn with seed + i: its place matters
    assert generates_alone({"targets": ["red"]}) and generates_alone({"messages": [{"role": "user", "content": "hi"}]})


def test_generate_takes_a_chat_of_turns_as_messages(api, model):
    """``messages`` (a chat of system / user / assistant turns) in the body: rendered through the model's chat
    template and encoded as `explain.generation.chat.render_chat` does; a job of its own; prompts and messages both
    are a 400."""
    from explain.generation.chat import render_chat

    _ws, client, editor = api
    chat = [{"role": "system", "content": "copy"}, {"role": "user", "content": PROMPTS[0]}]
    response = client.post("/v1/models/keycopy:generate", headers=editor,
                           json={"messages": chat, "parameters": {"max_new_tokens": 1, "method": "saliency"}})
    assert response.status_code == 200, response.text
    body = response.json()
    want = encode_texts(render_chat(model, [chat]), model.spec, special_tokens=False)[0]
    assert body["input_ids"][0][: body["prompt_length"][0]] == want.tolist() and body["run_rows"] == [0]
    both = client.post("/v1/models/keycopy:generate", headers=editor, json={"prompts": PROMPTS, "messages": chat})
    assert both.status_code == 400 and "not both" in both.json()["error"]


def test_generate_answers_the_views_its_run_keeps_when_asked(api, model):
    """``parameters.views`` (logit_lens, attention, contrast) answers what the run keeps of each text's selected
    step (`explain.generation.step_views`), equal to its saved views and to the live logit lens; views asked are
    not per prompt (such requests still batch); an unknown view, or a contrast view without a contrast, is 400."""
    from explain.generation.explained import LENS_TOP_K
    from explain.generation.job import saved_generation
    from explain.generation.logit_lens import logit_lens
    from explain.service.api import generates_alone

    ws, client, editor = api
    asked = {"max_new_tokens": NEW, "method": "saliency", "selected_step": 1, "contrast": " red",
             "views": ["logit_lens", "attention", "contrast"]}
    assert not generates_alone(asked)
    response = client.post("/v1/models/keycopy:generate", headers=editor, json={"prompts": PROMPTS, "parameters": asked})
    assert response.status_code == 200, response.text
    body = response.json()
    saved = saved_generation(ws.runs.open(OP, body["run"]))
    assert len(body["views"]) == len(PROMPTS)
    for got, kept, attr in zip(body["views"], saved.views, saved.attributions):
        p, ids = attr.prompt_length, attr.input_ids
        live = logit_lens(model, [ids[:-1]], top_k=LENS_TOP_K).top_ids[0][:, p - 1:]  # [layers + 1, T, k]
        assert got["logit_lens"]["steps"] == [0, 1] and got["logit_lens"]["top_ids"] == live.tolist()
        np.testing.assert_array_equal(np.asarray(got["logit_lens"]["top_probs"], np.float32), kept.lens_probs)
        assert got["logit_lens"]["top_tokens"][0][0] == [keycopy.VOCABULARY[i] for i in live[0, 0]]
        assert got["attention"]["steps"] == [1, 0]  # the selected step first
        np.testing.assert_array_equal(np.asarray(got["attention"]["weights"], np.float32), kept.attention)
        np.testing.assert_array_equal(np.asarray(got["attention"]["rollout"]), kept.rollout)
        assert (got["contrast"]["step"], got["contrast"]["alternative"]) == (1, keycopy.VOCABULARY.index("red"))
        np.testing.assert_array_equal(np.asarray(got["contrast"]["values"], np.float32), kept.contrast.values)
        assert got["contrast"]["completeness_error"] is None  # saliency defines none
    plain = client.post("/v1/models/keycopy:generate", headers=editor,
                        json={"prompts": PROMPTS[:1], "parameters": {"max_new_tokens": 1, "method": "saliency"}})
    assert plain.status_code == 200 and "views" not in plain.json()  # none asked: the answer as before
    for parameters, says in (({"views": ["lens"]}, "parameters.views must be a list of logit_lens"),
                             ({"views": ["contrast"]}, "no parameters.contrast")):
        bad = client.post("/v1/models/keycopy:generate", headers=editor, json={"prompts": PROMPTS, "parameters": parameters})
        assert bad.status_code == 400 and says in bad.json()["error"], bad.text
