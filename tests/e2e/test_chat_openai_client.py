"""The default fleet through the official openai client: real Ray Serve, real vLLM, real HTTP."""

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "city": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
    },
    "required": ["name", "city", "age"],
    "additionalProperties": False,
}
PEOPLE = [
    "Maria is 34 and lives in Lisbon.",
    "Tom, aged 61, has a flat in Leeds.",
    "My neighbour Aiko (29) moved to Osaka last year.",
    "Carlos lives in Mexico City. He turned 45 in May.",
    "The new intern, Priya, is 22; she commutes from Pune.",
    "Olaf from Oslo is seventy years old.",
    "Name: Chen Wei. Age: 38. Home: Shanghai.",
    "Hi! I'm Fatima, 27, from Casablanca.",
    "Grandpa Joe is 88 and still lives in Dublin.",
    "Lena (19) studies in Berlin.",
    "Our customer Mr. Okafor, 52, resides in Lagos.",
    "Sofia is a 31-year-old architect in Rome.",
    "Jack lives in Sydney and is 40.",
    "At 65, Ingrid retired in Stockholm.",
    "Ravi, 36, Bangalore.",
    "The author, Hannah Schmidt, born 1980, lives in Munich.",
    "Luis is twelve and lives in Madrid with his parents.",
    "Emma Brown (age 57) - Toronto.",
    "Yusuf moved to Istanbul when he was 30, and that was 5 years ago.",
    "No details here except that Kim lives in Seoul and is 24.",
]


def ask(client, model, content, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kw)


def test_capital_of_france_is_paris(client):
    reply = ask(client, "smol", "What is the capital of France?", max_tokens=32)
    assert "Paris" in reply.choices[0].message.content
    assert reply.usage.prompt_tokens > 5 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streamed_chunks_join_to_the_full_text(client):
    question = "Name three primary colours."
    whole = ask(client, "smol", question, max_tokens=48, temperature=0).choices[0].message.content
    stream = ask(client, "smol", question, max_tokens=48, temperature=0, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len([p for p in pieces if p]) > 1, "expected the answer in several chunks"
    assert "".join(pieces) == whole


def test_json_schema_reply_validates_for_twenty_prompts(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True}}

    def extract(text):
        prompt = f"Extract name, city and age as JSON.\n{text}"
        return ask(client, "smol", prompt, response_format=fmt, max_tokens=96).choices[0].message.content

    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(extract, PEOPLE))
    for text, reply in zip(PEOPLE, replies, strict=True):
        assert isinstance(json.loads(reply), dict), text
        jsonschema.validate(json.loads(reply), PERSON_SCHEMA)


def test_extract_specialist_satisfies_its_own_contract_without_response_format(client):
    reply = ask(client, "extract", "Hi, I'm Maria, 34, living in Lisbon.")
    data = json.loads(reply.choices[0].message.content)
    jsonschema.validate(data, PERSON_SCHEMA)
    assert data["city"] == "Lisbon"


def test_classifier_answers_only_with_its_choices(client):
    choices = {"refund", "order_status", "technical_issue", "other"}
    messages = [
        "I want my money back for the broken kettle.",
        "Where is my parcel? It was due Monday.",
        "The app crashes when I log in.",
        "Do you sell gift cards?",
        "asdfghjkl",
    ]
    answers = [ask(client, "intent", m).choices[0].message.content for m in messages]
    assert set(answers) <= choices, answers


def test_unknown_model_is_a_404_error_object(client):
    with pytest.raises(openai.NotFoundError) as caught:
        ask(client, "gpt-imaginary", "hi")
    assert caught.value.status_code == 404
    assert caught.value.body["code"] == "model_not_found"


def test_empty_messages_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="smol", messages=[])
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == "messages"


def test_over_long_prompt_is_a_400_not_a_500(client):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "smol", "word " * 3000)
    assert caught.value.body["code"] == "context_length_exceeded"


def test_models_endpoint_lists_specialists(client):
    ids = {m.id for m in client.models.list()}
    assert {"smol", "big", "intent", "extract", "summarize", "pipeline:support-triage"} <= ids
