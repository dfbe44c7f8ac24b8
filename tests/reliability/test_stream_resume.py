"""What a resumed stream rests on, on the real engine: a request that carries the text already sent
(``continue_from``) continues the answer where it was cut, so prefix and continuation are the uncut answer, with
one answer's token counts. Asked straight of the model replica through its Serve handle (a driver attached to the
fleet's Ray), cut at the stream's own delta boundaries as a dying replica would cut it."""

import json
import subprocess
import sys

import pytest

from tests.fleet_process import driver_env

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(240)]

# Streams one greedy answer whole, then resumed after 2 deltas and after half of them; prints one JSON line.
RESUME_PROBE = """
import json, sys, uuid, ray
from ray import serve
from deployments.protocol import GenerationRequest, GenerationResult
ray.init(address=sys.argv[1], log_to_driver=False)
handle = serve.get_deployment_handle("model-smol", "model-smol").options(stream=True)
messages = [{"role": "user", "content": "Describe a sunny day at the beach in three sentences."}]

def stream(prefix=None):
    request = GenerationRequest(uuid.uuid4().hex, messages, max_tokens=40, temperature=0.0, continue_from=prefix)
    deltas, final = [], None
    for item in handle.stream.remote(request):
        if isinstance(item, GenerationResult):
            final = item
        elif item.text:
            deltas.append(item.text)
    return {"deltas": deltas, "error": repr(final.error), "tokens": [final.prompt_tokens, final.completion_tokens],
            "finish": final.finish_reason}

whole = stream()
cuts = [2, len(whole["deltas"]) // 2]
resumed = [dict(stream("".join(whole["deltas"][:cut])), cut=cut) for cut in cuts]
print(json.dumps({"whole": whole, "resumed": resumed}), flush=True)
"""


def test_a_resumed_greedy_stream_continues_the_uncut_answer(fleet):
    probe = subprocess.run(
        [sys.executable, "-c", RESUME_PROBE, fleet.ray_address()],
        capture_output=True,
        text=True,
        env=driver_env(),
        timeout=180,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    out = json.loads(probe.stdout.strip().splitlines()[-1])
    whole = out["whole"]
    answer = "".join(whole["deltas"])
    assert whole["error"] == "None" and len(whole["deltas"]) > 4, whole
    for resumed in out["resumed"]:
        prefix = "".join(whole["deltas"][: resumed["cut"]])
        assert resumed["error"] == "None", resumed
        assert prefix + "".join(resumed["deltas"]) == answer, (resumed["cut"], prefix, resumed["deltas"])
        assert resumed["tokens"] == whole["tokens"], "a resumed answer is billed as one answer"
        assert resumed["finish"] == whole["finish"]
