"""A streamed ``pipeline:<name>`` chat call sends its output step's text as the model generates it, over a fake
streaming model (no engine): the deltas reach the client one by one, a failure before any text is an HTTP error,
and a failure after text ends the stream with an error event and ``[DONE]``."""

import json
from pathlib import Path

import yaml
from fastapi.testclient import TestClient

from cluster.spec import parse_spec
from deployments.pipeline.runner import PipelineRunner
from deployments.pipeline.tools import ToolRegistry
from deployments.protocol import GenerationError, GenerationResult, StreamDelta
from deployments.router.api import build_api

ROOT = Path(__file__).resolve().parents[2]
PIECES = ("Your ", "refund ", "is on ", "its way.")


def spec_with_pipeline(reply_output=None):
    data = yaml.safe_load((ROOT / "fleet.yaml").read_text())
    data["pipelines"]["triage-reply"] = {
        "steps": {
            "classify": {"specialist": "intent"},
            "reply": {"specialist": "support-reply", "input": "Intent: {{ steps.classify.output }}"},
        },
        **({"output": reply_output} if reply_output else {}),
    }
    return parse_spec(data)


class FakeStreamingModels:
    """A fake for the model handles: intent answers "refund"; support-reply streams PIECES (or fails)."""

    def __init__(self, reply_error=None, cut_after=None):
        self.reply_error, self.cut_after = reply_error, cut_after
        self.streamed = []

    async def complete(self, model, request):
        if request.specialist == "intent":
            return GenerationResult(model=model, text="refund", finish_reason="stop", completion_tokens=1)
        text = "".join(PIECES)
        return GenerationResult(model=model, text=text, finish_reason="stop", completion_tokens=4)

    async def stream(self, model, request):
        self.streamed.append(request.specialist)
        if self.reply_error is not None:
            yield GenerationResult(model=model, error=GenerationError(self.reply_error, "down"))
            return
        for piece in PIECES[: self.cut_after]:
            yield StreamDelta(piece)
        if self.cut_after is not None:  # the engine dies mid-answer
            yield GenerationResult(model=model, error=GenerationError("engine_dead", "gone mid-answer"))
            return
        yield GenerationResult(model=model, text="".join(PIECES), finish_reason="stop", completion_tokens=4)

    async def health(self):
        return {"smol": {"state": "ready"}, "big": {"state": "ready"}}

    async def unready(self, model):
        return None


def chat_stream(spec, models):
    runner = PipelineRunner(spec, models.complete, ToolRegistry.from_spec(spec), stream_model=models.stream)
    client = TestClient(build_api(spec, models, runner=runner), raise_server_exceptions=False)
    body = {"model": "pipeline:triage-reply", "messages": [{"role": "user", "content": "money back"}], "stream": True}
    return client.post("/v1/chat/completions", json=body)


def data_lines(resp):
    return [line.removeprefix("data: ") for line in resp.text.splitlines() if line.startswith("data: ")]


def test_the_output_steps_text_streams_delta_by_delta():
    models = FakeStreamingModels()
    resp = chat_stream(spec_with_pipeline(), models)
    assert resp.status_code == 200
    lines = data_lines(resp)
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"][0]["delta"].get("content")]
    assert contents == list(PIECES)  # one chunk per model delta, not one at the end
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["slmfleet"]["status"] == "ok"
    assert models.streamed == ["support-reply"]  # only the output step streams; classify is a whole call


def test_with_an_output_template_the_answer_leaves_whole_at_the_end():
    models = FakeStreamingModels()
    resp = chat_stream(spec_with_pipeline(reply_output="{{ steps.reply.output }}"), models)
    chunks = [json.loads(line) for line in data_lines(resp)[:-1]]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"][0]["delta"].get("content")]
    assert contents == ["".join(PIECES)] and models.streamed == []


def test_a_run_that_fails_before_any_text_is_a_plain_http_error():
    spec_data = yaml.safe_load((ROOT / "fleet.yaml").read_text())
    assert "escalation" not in spec_data["specialists"]["support-reply"]  # no policy: the failure stands
    resp = chat_stream(spec_with_pipeline(), FakeStreamingModels(reply_error="bad_request"))
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == "pipeline_error" and "reply" in error["message"]


def test_a_run_that_fails_after_text_left_ends_with_an_error_event_and_done():
    resp = chat_stream(spec_with_pipeline(), FakeStreamingModels(cut_after=2))
    assert resp.status_code == 200  # the headers left with the first delta
    lines = data_lines(resp)
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:2]] == list(PIECES[:2])
    assert chunks[-1]["error"]["code"] == "pipeline_unavailable" and "reply" in chunks[-1]["error"]["message"]
