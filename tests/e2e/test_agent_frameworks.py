"""Agent frameworks from PyPI run their own agent loops against the fleet, each with one tool round trip.

What is real: the OpenAI Agents SDK, LangChain, pydantic-ai and smolagents as installed from PyPI (the ``test``
extra), each through its own OpenAI model class, over HTTP to the fleet that ``slmfleet up`` serves
(tests/e2e/conftest.py). Nothing is mocked. What is arranged: the first model turn is made to call the tool,
through each framework's public tool-choice option, because a 135M model (SmolLM2) seldom picks a tool on its
own. Each test then lets the loop end the way its framework provides (said at each test), and checks that the
tool function itself ran, with arguments valid for the schema the framework sent, and that a final answer came.
"""

import asyncio
import dataclasses
from typing import Any, Literal

import agents
import jsonschema
import pydantic_ai
import pytest
import smolagents
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool as langchain_tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI
from pydantic import BaseModel, Field
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai_compatible import OpenAICompatibleProvider
from smolagents import tool  # spelled exactly @tool: smolagents reads the decorator back from the tool's source

pytestmark = pytest.mark.e2e

MODEL = "smol"
API_KEY = "unused-on-loopback"
REQUEST_TIMEOUT_S = 120
QUESTION = "What is the weather in Paris today? Use the get_weather tool, then answer in one sentence."
City = Literal["Paris", "Lisbon", "Tokyo"]  # an enum keeps a forced call's arguments short and checkable
WEATHER = {"Paris": "sunny, 21 C", "Lisbon": "windy, 18 C", "Tokyo": "light rain, 15 C"}


class Person(BaseModel):
    """A person pulled out of text; bounded strings, so a runaway string ends at the limit."""

    name: str = Field(max_length=40)
    city: str = Field(max_length=40)
    age: int = Field(ge=0, le=150)


class WeatherAnswer(BaseModel):
    """pydantic-ai's typed output: the city asked about and a short forecast."""

    city: City
    forecast: str = Field(max_length=60)


def base_url(fleet) -> str:
    return f"{fleet.url}/v1"


def weather_report(city: str) -> str:
    return f"The weather in {city}: {WEATHER[city]}."


def named(tool_name: str) -> dict[str, Any]:
    """Chat completions' tool_choice for one function, as smolagents passes it through untouched."""
    return {"type": "function", "function": {"name": tool_name}}


def assert_tool_ran(calls: list[dict[str, Any]], schema: dict[str, Any]) -> None:
    """The tool function itself ran, and every call's arguments validate against the schema the model got."""
    assert calls, "the tool function was never called"
    for args in calls:
        jsonschema.validate(args, schema)


def assert_final_text(answer: Any) -> None:
    assert isinstance(answer, str), f"expected a text answer, got {type(answer).__name__}: {answer!r}"
    assert answer.strip(), "the final answer is empty"


# --- OpenAI Agents SDK ----------------------------------------------------------------------------------------


class AnswerAfterTool(agents.AgentHooks):
    """After a tool has run, the agent's next turn must answer in text (tool_choice "none")."""

    async def on_tool_end(self, context, agent, tool, result) -> None:
        agent.model_settings = dataclasses.replace(agent.model_settings, tool_choice="none")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("api", ["responses", "chat_completions"])
def test_openai_agents_sdk_runs_a_tool_then_answers(fleet, api):
    """``ModelSettings(tool_choice="required")`` forces the first turn; once the tool has run, the agent's own
    ``on_tool_end`` hook sets tool_choice "none", so the next turn (tools still offered) answers in text. (The
    SDK's default ``reset_tool_choice`` would hand the choice to the model under "auto"; how often a 135M model
    then answers instead of calling again is a benchmark figure, not a gate.)"""
    agents.set_tracing_disabled(True)  # the SDK would export traces to OpenAI; there is no network
    calls: list[dict[str, Any]] = []

    @agents.function_tool
    def get_weather(city: City) -> str:
        """Get today's weather for a city."""
        calls.append({"city": city})
        return weather_report(city)

    async def run() -> agents.RunResult:
        client = AsyncOpenAI(base_url=base_url(fleet), api_key=API_KEY, max_retries=0, timeout=REQUEST_TIMEOUT_S)
        if api == "responses":
            model = agents.OpenAIResponsesModel(model=MODEL, openai_client=client)
        else:
            model = agents.OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
        agent = agents.Agent(
            name="weather",
            instructions="You answer questions about the weather in one short sentence.",
            tools=[get_weather],
            model=model,
            # an answer cut at max_tokens is a Response with status "incomplete", which the SDK raises on
            model_settings=agents.ModelSettings(tool_choice="required", temperature=0.0, max_tokens=256),
            reset_tool_choice=False,
            hooks=AnswerAfterTool(),
        )
        try:
            return await agents.Runner.run(agent, QUESTION, max_turns=4)
        finally:
            await client.close()

    result = asyncio.run(run())

    assert_tool_ran(calls, get_weather.params_json_schema)
    outputs = [item.output for item in result.new_items if isinstance(item, agents.ToolCallOutputItem)]
    assert sorted(outputs) == sorted(weather_report(args["city"]) for args in calls)
    assert isinstance(result.new_items[-1], agents.MessageOutputItem), "the run did not end on a model message"
    assert len(result.raw_responses) >= 2, "expected a tool turn and an answer turn"
    assert_final_text(result.final_output)


# --- LangChain ------------------------------------------------------------------------------------------------


def langchain_chat(fleet, max_tokens: int) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=base_url(fleet),
        api_key=API_KEY,
        model=MODEL,
        temperature=0.0,
        max_tokens=max_tokens,  # sent as max_completion_tokens
        max_retries=0,
        timeout=REQUEST_TIMEOUT_S,
    )


@pytest.mark.timeout(180)
def test_langchain_tool_call_round_trip(fleet):
    """LangChain leaves the loop to the caller: ``bind_tools(tool_choice="get_weather")`` forces the call, the
    ToolMessage goes back with the tools still bound, and ``tool_choice="none"`` lets that turn only answer."""
    calls: list[dict[str, Any]] = []

    @langchain_tool
    def get_weather(city: City) -> str:
        """Get today's weather for a city."""
        calls.append({"city": city})
        return weather_report(city)

    llm = langchain_chat(fleet, max_tokens=96)
    messages = [HumanMessage(QUESTION)]
    ai_call = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(messages)
    assert ai_call.tool_calls, f"a forced tool_choice gave no tool call: {ai_call!r}"
    messages.append(ai_call)
    messages += [get_weather.invoke(tool_call) for tool_call in ai_call.tool_calls]
    assert all(isinstance(m, ToolMessage) and m.status == "success" for m in messages[2:])

    answer = llm.bind_tools([get_weather], tool_choice="none").invoke(messages)

    assert_tool_ran(calls, convert_to_openai_tool(get_weather)["function"]["parameters"])
    assert not answer.tool_calls
    assert_final_text(answer.content)


@pytest.mark.timeout(180)
def test_langchain_structured_output_json_schema(fleet):
    """``with_structured_output(method="json_schema")`` sends response_format json_schema (strict, from the
    pydantic model) and parses the reply back into the model."""
    extract = langchain_chat(fleet, max_tokens=160).with_structured_output(Person, method="json_schema")

    person = extract.invoke("Extract the person's name, city and age. Maria is 34 and lives in Lisbon.")

    assert isinstance(person, Person)
    jsonschema.validate(person.model_dump(), Person.model_json_schema())


# --- pydantic-ai ----------------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_pydantic_ai_tool_then_typed_output(fleet):
    """With a pydantic ``output_type`` pydantic-ai sends tool_choice "required" on every turn (the output is the
    ``final_result`` tool), and refuses a static forcing ``tool_choice``. A per-step ``model_settings`` callable
    (its documented way to vary tool_choice) names get_weather until it has run, then "none": function tools
    off, so the only tool left to call is ``final_result``, which ends the run with a validated output."""
    calls: list[dict[str, Any]] = []

    def get_weather(city: City) -> str:
        """Get today's weather for a city."""
        calls.append({"city": city})
        return weather_report(city)

    def settings_for_step(ctx: pydantic_ai.RunContext[None]) -> pydantic_ai.ModelSettings:
        tool_choice = "none" if calls else ["get_weather"]
        return pydantic_ai.ModelSettings(tool_choice=tool_choice, temperature=0.0, max_tokens=96)

    tool = pydantic_ai.Tool(get_weather)

    async def run() -> pydantic_ai.AgentRunResult[WeatherAnswer]:
        async with AsyncOpenAI(
            base_url=base_url(fleet), api_key=API_KEY, max_retries=0, timeout=REQUEST_TIMEOUT_S
        ) as client:
            agent = pydantic_ai.Agent(
                OpenAIChatModel(MODEL, provider=OpenAICompatibleProvider("slm-fleet", openai_client=client)),
                output_type=WeatherAnswer,
                tools=[tool],
                instructions="You answer questions about the weather.",
                model_settings=settings_for_step,
            )
            return await agent.run(QUESTION, usage_limits=pydantic_ai.UsageLimits(request_limit=4))

    result = asyncio.run(run())

    assert_tool_ran(calls, tool.tool_def.parameters_json_schema)
    assert isinstance(result.output, WeatherAnswer)
    jsonschema.validate(result.output.model_dump(), WeatherAnswer.model_json_schema())
    returns = [
        part.content
        for message in result.all_messages()
        for part in message.parts
        if isinstance(part, pydantic_ai.ToolReturnPart) and part.tool_name == "get_weather"
    ]
    assert sorted(returns) == sorted(weather_report(args["city"]) for args in calls)


# --- smolagents -----------------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_smolagents_tool_calling_agent(fleet):
    """smolagents sends tool_choice "required" on every step (the model's ``tool_choice`` keyword overrides it)
    and ends a run only when the model calls its ``final_answer`` tool. The model is made to call get_weather
    (named tool_choice); once it has run, a step callback names ``final_answer``, which ends the run."""
    calls: list[dict[str, Any]] = []

    @tool
    def get_weather(city: City) -> str:
        """Get today's weather for a city.

        Args:
            city: The city to look up.
        """
        calls.append({"city": city})
        return weather_report(city)

    def answer_once_the_tool_ran(step: smolagents.ActionStep, agent: smolagents.ToolCallingAgent) -> None:
        if calls:
            agent.model.kwargs["tool_choice"] = named("final_answer")

    model = smolagents.OpenAIModel(
        model_id=MODEL,
        api_base=base_url(fleet),
        api_key=API_KEY,
        client_kwargs={"max_retries": 0, "timeout": REQUEST_TIMEOUT_S},
        temperature=0.0,
        max_tokens=96,
        tool_choice=named("get_weather"),
    )
    agent = smolagents.ToolCallingAgent(
        tools=[get_weather], model=model, max_steps=3, step_callbacks=[answer_once_the_tool_ran]
    )

    result = agent.run(QUESTION, return_full_result=True)

    schema = smolagents.models.get_tool_json_schema(get_weather)["function"]["parameters"]  # as sent
    assert_tool_ran(calls, schema)
    assert result.state == "success", "the run ended at max_steps, not on final_answer"
    assert_final_text(result.output)
