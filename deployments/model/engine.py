"""The one place that talks to vLLM: start an ``AsyncLLM`` for a spec model and stream chat generations.

Imported only inside model replicas (and benchmarks), never by ``cluster/``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from jinja2 import TemplateError
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMClientError
from vllm.lora.request import LoRARequest
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError
from vllm.v1.executor.uniproc_executor import UniProcExecutor

from cluster.spec import ModelSpec
from deployments.model.adapters import LoadedAdapter
from deployments.model.chat_request import EngineCall
from deployments.model.tool_prompt import render_plain, template_supports_tools

log = logging.getLogger(__name__)
CPU_DEFAULT_MEMORY_FRACTION = 0.15


class PromptTooLongError(ValueError):
    """The rendered prompt leaves no room for output within max_model_len."""


class PromptRenderError(ValueError):
    """The model's chat template or tokenizer refused these messages (a client's input, so a 400)."""


def engine_args(model_path: str, model: ModelSpec, overrides: dict[str, Any] | None = None) -> AsyncEngineArgs:
    """vLLM engine arguments from the spec, with the placement plan's overrides on top."""
    options: dict[str, Any] = {
        "model": model_path,
        "max_model_len": model.max_model_len,
        "max_num_seqs": model.concurrent_seqs,
        "dtype": model.dtype,
        "enforce_eager": model.engine.enforce_eager,
        "gpu_memory_utilization": model.engine.gpu_memory_utilization or CPU_DEFAULT_MEMORY_FRACTION,
        "seed": model.engine.seed,
        "tensor_parallel_size": model.tensor_parallel or 1,
        "disable_log_stats": True,
        # JSON under a schema is written compactly (", " and ": " only): no runaway whitespace, and the schema's
        # longest answer can be bounded in tokens (deployments/model/json_budget.py)
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
    }
    if model.lora is not None:
        options.update(
            enable_lora=True,
            max_loras=model.lora.max_loras,
            max_lora_rank=model.lora.max_lora_rank,
            max_cpu_loras=model.lora.max_cpu_loras or model.lora.max_loras,
        )
    if model.engine.max_num_batched_tokens:
        options["max_num_batched_tokens"] = model.engine.max_num_batched_tokens
    options.update(overrides or {})
    if _worker_in_engine_core(model, options):
        options["distributed_executor_backend"] = UniProcExecutor
    return AsyncEngineArgs(**options)


def _worker_in_engine_core(model: ModelSpec, options: dict[str, Any]) -> bool:
    """On the CPU, vLLM turns the ``"uni"`` executor into ``"mp"``: a worker process of its own, bound by OpenMP to
    the cores the engine core leaves free. That third process costs about 8 s of start-up (it imports torch and vLLM
    again), 0.5 GiB, and twice the CPU time per token, spent by the two processes waiting on each other (measured:
    docs/benchmarks.md, "vLLM's CPU worker"). Naming the executor class runs the worker inside the engine core."""
    return (
        current_platform.is_cpu()
        and model.engine.cpu_worker == "in_process"
        and options["tensor_parallel_size"] == 1
        and "distributed_executor_backend" not in options
    )


def cpu_worker_threads() -> int:
    """The OpenMP threads vLLM gives its own CPU worker process: every core this process may run on but one, which
    is left to the engine core's scheduling loop."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


@contextmanager
def _engine_core_threads(args: AsyncEngineArgs) -> Iterator[None]:
    """With the worker inside the engine core, vLLM's OpenMP set-up of a worker process does not run, and the engine
    core would inherit this replica's ``OMP_NUM_THREADS`` (Ray sets it to the replica's ``num_cpus``: 1), so it
    would decode on one thread on any host. It gets what vLLM gives its own worker (:func:`cpu_worker_threads`)."""
    if args.distributed_executor_backend is not UniProcExecutor:
        yield
        return
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(cpu_worker_threads())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before


@dataclass
class GenerationTally:
    """Running totals of one generation, filled from the engine's delta outputs."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    resumed_tokens: int = 0  # of completion_tokens, those a resumed stream's prefix holds (decoded elsewhere)
    logprob_sum: float = 0.0
    logprob_count: int = 0
    finish_reason: str | None = None
    text_parts: list[str] = field(default_factory=list)
    token_logprobs: list[dict[str, Any]] | None = None  # OpenAI's logprobs.content, when the call asked for them
    logprobs_sent: int = 0  # how many of them a stream has sent

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    @property
    def mean_logprob(self) -> float | None:
        return self.logprob_sum / self.logprob_count if self.logprob_count else None


class ChatEngine:
    """A vLLM ``AsyncLLM`` with chat templating and length checks done up front."""

    def __init__(self, engine: AsyncLLM, max_model_len: int) -> None:
        self.engine = engine
        self.max_model_len = max_model_len
        # chat templating and tokenization (milliseconds for a long prompt) run here, one at a time (the tokenizer
        # is not made to be shared across threads), off the replica's event loop, which serves every request
        self._templating = ThreadPoolExecutor(max_workers=1, thread_name_prefix="templating")
        self.tokenizer = engine.get_tokenizer()
        self.native_tools = template_supports_tools(getattr(self.tokenizer, "chat_template", None))

    @classmethod
    def start(cls, model_path: str, model: ModelSpec, overrides: dict[str, Any] | None = None) -> ChatEngine:
        args = engine_args(model_path, model, overrides)
        with _engine_core_threads(args):  # the engine-core process starts (and takes its environment) in here
            engine = AsyncLLM.from_engine_args(args)
        return cls(engine, model.max_model_len)

    def prompt_ids(self, call: EngineCall) -> list[int]:
        """The chat-templated prompt; tools go through the template when it knows them, else the documented
        rendering of :mod:`deployments.model.tool_prompt`. A resumed stream's prefix follows the open assistant
        turn, so the engine continues the answer where it was cut."""
        options: dict[str, Any] = {"add_generation_prompt": True, "tokenize": False}
        if self.native_tools:
            messages = call.messages
            if call.tools:
                options["tools"] = [_openai_tool(t) for t in call.tools]
        else:
            messages = render_plain(call.messages, call.tools)
        text = self.tokenizer.apply_chat_template(messages, **options)
        return list(self.tokenizer.encode(text + call.prefix, add_special_tokens=False))

    def _encoded(self, call: EngineCall) -> tuple[list[int], int]:
        """The prompt's ids and how many of them are a resumed stream's prefix (answer already decoded)."""
        already = len(self.tokenizer.encode(call.prefix, add_special_tokens=False)) if call.prefix else 0
        return self.prompt_ids(call), already

    async def generate(
        self,
        call: EngineCall,
        tally: GenerationTally,
        *,
        incremental: bool = True,
        adapter: LoadedAdapter | None = None,
    ) -> AsyncIterator[str]:
        """Yield text deltas while filling ``tally``; raises PromptTooLongError or vLLM's own errors.

        ``incremental=False`` asks the engine for the final output only: one wake-up per request instead of one
        per token, which matters when the replica shares a small CPU with the engine.
        """
        try:
            ids, already = await asyncio.get_running_loop().run_in_executor(self._templating, self._encoded, call)
        except (TypeError, ValueError, UnicodeError, TemplateError) as exc:
            log.warning("messages not renderable: %r", exc)
            raise PromptRenderError(
                f"the messages could not be rendered for this model ({type(exc).__name__})"
            ) from exc
        room = self.max_model_len - len(ids)
        if room <= 0:
            raise PromptTooLongError(
                f"the prompt has {len(ids)} tokens; this model's context is {self.max_model_len} tokens"
            )
        # a resumed answer counts as one answer: its prefix is output already decoded, not prompt
        tally.prompt_tokens, tally.completion_tokens, tally.resumed_tokens = len(ids) - already, already, already
        if call.sampling.get("max_tokens") and already >= int(call.sampling["max_tokens"]):
            tally.finish_reason = "length"  # cut after its last token: the answer is whole, nothing to decode
            return
        params = self._sampling_params(call, room, incremental, already)
        stream = self.engine.generate(
            {"prompt_token_ids": ids}, params, request_id=uuid.uuid4().hex, lora_request=_lora(adapter)
        )
        async for output in stream:
            choice = output.outputs[0]
            tally.completion_tokens += len(choice.token_ids)
            _add_logprobs(tally, choice, call.sampling.get("logprobs"))
            if choice.finish_reason:
                tally.finish_reason = choice.finish_reason
            if choice.text:
                tally.text_parts.append(choice.text)
                yield choice.text

    def _sampling_params(self, call: EngineCall, room: int, incremental: bool, already: int = 0) -> SamplingParams:
        """``already``: tokens of the answer decoded before (a resumed stream), taken off its ``max_tokens``."""
        sampling = dict(call.sampling)
        wanted = int(sampling["max_tokens"]) - already if sampling.get("max_tokens") else room
        sampling["max_tokens"] = max(1, min(wanted, room))
        structured = StructuredOutputsParams(**call.structured) if call.structured else None
        kind = RequestOutputKind.DELTA if incremental else RequestOutputKind.FINAL_ONLY
        return SamplingParams(**sampling, structured_outputs=structured, output_kind=kind)

    async def add_adapter(self, adapter: LoadedAdapter) -> None:
        """Load an adapter into the engine (raises, engine unharmed, when its files cannot be loaded)."""
        await self.engine.add_lora(_lora(adapter))

    async def remove_adapter(self, adapter: LoadedAdapter) -> None:
        await self.engine.remove_lora(adapter.int_id)

    def token_ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    async def next_token_logprobs(
        self, ids: list[int], adapter: LoadedAdapter | None = None, top_k: int = 20
    ) -> dict[int, float]:
        """The ``top_k`` likeliest next tokens after ``ids`` and their log-probabilities (one prefill, one token)."""
        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=top_k)
        final = None
        async for output in self.engine.generate(
            {"prompt_token_ids": ids}, params, request_id=uuid.uuid4().hex, lora_request=_lora(adapter)
        ):
            final = output
        positions = final.outputs[0].logprobs if final is not None else None
        return {token: float(entry.logprob) for token, entry in (positions[0] if positions else {}).items()}

    async def check_health(self) -> None:
        await self.engine.check_health()

    def shutdown(self) -> None:
        self._templating.shutdown(wait=False)
        self.engine.shutdown()


def _lora(adapter: LoadedAdapter | None) -> LoRARequest | None:
    if adapter is None:
        return None
    return LoRARequest(adapter.name, adapter.int_id, str(adapter.path))


def _openai_tool(tool: Any) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
    }


def _add_logprobs(tally: GenerationTally, choice: Any, top_n: int | None) -> None:
    """Sum the sampled tokens' log-probabilities (confidence) and, when asked, keep OpenAI's per-token entries."""
    if top_n is not None and tally.token_logprobs is None:
        tally.token_logprobs = []
    for token_id, position in zip(choice.token_ids, choice.logprobs or [], strict=False):
        entry = position.get(token_id)
        if entry is None:
            continue
        tally.logprob_sum += entry.logprob
        tally.logprob_count += 1
        if tally.token_logprobs is not None:
            tally.token_logprobs.append(_openai_logprob(entry, position, top_n or 0))


def _token_entry(logprob: Any) -> dict[str, Any]:
    token = logprob.decoded_token or ""
    return {"token": token, "logprob": max(float(logprob.logprob), -9999.0), "bytes": list(token.encode())}


def _openai_logprob(sampled: Any, position: dict[int, Any], top_n: int) -> dict[str, Any]:
    """One ``logprobs.content`` entry: the sampled token, then the ``top_n`` most likely tokens by rank."""
    top = sorted(position.values(), key=lambda lp: lp.rank if lp.rank is not None else 0)[:top_n]
    return {**_token_entry(sampled), "top_logprobs": [_token_entry(lp) for lp in top]}


__all__ = [
    "ChatEngine",
    "EngineDeadError",
    "EngineGenerateError",
    "GenerationTally",
    "PromptRenderError",
    "PromptTooLongError",
    "VLLMClientError",
]
