"""The router's side of the usage log: opted-in LLM-tier calls recorded into sealed segments, off the event loop.

A request never waits for the log and never fails because of it: :meth:`UsageLog.record` puts the record on a
bounded queue and returns; a writer thread seals batches into this replica's own stream of segments
(:mod:`cluster.convert.sealed_log`). A full queue or a failed write drops records, which are counted
(``ray_slmfleet_usage_log_records_total{outcome="dropped"}``), never retried on the request's time. Segments close
at the spec's size or age; with an object-store destination a closed segment is uploaded and its local copy
deleted (a failed upload is retried at the next close).
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cluster.convert.sealed_log import SEGMENT_SUFFIX, SegmentWriter, parse_public_key
from cluster.convert.usage_scope import is_logged, is_object_store, log_destination
from cluster.cost import PriceBook
from cluster.model_store import slmfleet_home
from cluster.object_store import upload_file
from cluster.spec import FleetSpec, UsageLogSpec
from deployments.model.chat_request import contract_from_spec
from deployments.protocol import GenerationRequest, GenerationResult

log = logging.getLogger(__name__)
BATCH_RECORDS = 256  # records sealed into one frame at most
RECORD_VERSION = 1
Count = Callable[[str, int], None]  # (outcome: "written" | "dropped", records)
_STOP = object()


def stream_name() -> str:
    """This replica's own segment stream: host, process and a random part (a restarted replica starts a new one)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class UsageLog:
    """One replica's writer: a bounded queue drained by one thread into sealed segments."""

    def __init__(
        self, settings: UsageLogSpec, stream: str, count: Count | None = None, home: Path | None = None
    ) -> None:
        self.settings = settings
        self.stream = stream
        self.count = count or (lambda outcome, n: None)
        self.destination = log_destination(settings, home)
        self.remote = is_object_store(self.destination)
        # segments are written locally; for object storage into a staging folder, uploaded when closed
        root = (home or slmfleet_home()) / "usage-log-staging" if self.remote else Path(self.destination)
        self.folder = root / stream
        self.recipient = parse_public_key(settings.public_key)
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=settings.buffer_records)
        self._sequence = 0
        self._thread = threading.Thread(target=self._run, name=f"usage-log-{stream}", daemon=True)
        self._thread.start()

    def record(self, record: dict[str, Any]) -> bool:
        """Queue a record for writing; False (and counted as dropped) when the buffer is full."""
        try:
            self.queue.put_nowait(record)
            return True
        except queue.Full:
            self.count("dropped", 1)
            return False

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, close the open segment (uploading it), and stop the thread."""
        try:
            self.queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            log.warning("usage log %s: buffer still full at close; its records are dropped", self.stream)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        writer: SegmentWriter | None = None
        while True:
            wait = None if writer is None else max(0.0, self.settings.segment_max_age_s - _age(writer))
            try:
                item = self.queue.get(timeout=wait)
            except queue.Empty:  # the open segment reached its age
                writer = self._close(writer)
                continue
            batch, stop = self._batch(item)
            if batch:
                writer = self._write(writer, batch)
            if writer is not None and (stop or self._full(writer)):
                writer = self._close(writer)
            if stop:
                return

    def _batch(self, first: Any) -> tuple[list[dict[str, Any]], bool]:
        """``first`` and what else is already queued (up to a frame's worth); whether the stop sign came."""
        batch: list[dict[str, Any]] = []
        item = first
        while True:
            if item is _STOP:
                return batch, True
            batch.append(item)
            if len(batch) >= BATCH_RECORDS:
                return batch, False
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return batch, False

    def _write(self, writer: SegmentWriter | None, batch: list[dict[str, Any]]) -> SegmentWriter | None:
        try:
            writer = writer or self._open()
            writer.append(batch)
        except (OSError, ValueError) as exc:  # a full disk or a bad record: these records are lost, and counted
            log.warning("usage log %s: %d records not written: %r", self.stream, len(batch), exc)
            self.count("dropped", len(batch))
            return writer
        self.count("written", len(batch))
        return writer

    def _open(self) -> SegmentWriter:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._sequence += 1
        name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{self._sequence:06d}{SEGMENT_SUFFIX}"
        return SegmentWriter(self.folder / name, self.recipient, self.stream)

    def _full(self, writer: SegmentWriter) -> bool:
        too_big = writer.size >= self.settings.segment_max_mib * 2**20
        return too_big or _age(writer) >= self.settings.segment_max_age_s

    def _close(self, writer: SegmentWriter | None) -> None:
        if writer is not None:
            writer.close()
        if self.remote:
            self._upload_closed()

    def _upload_closed(self) -> None:
        """Every closed segment in the staging folder to object storage, each deleted locally once stored."""
        for path in sorted(self.folder.glob(f"*{SEGMENT_SUFFIX}")):
            try:
                upload_file(path, self.destination, f"{self.stream}/{path.name}")
            except Exception as exc:  # the store is down: kept here, tried again at the next close
                log.warning("usage log %s: upload of %s failed, kept for the next try: %r", self.stream, path, exc)
                return
            path.unlink()


def _age(writer: SegmentWriter) -> float:
    return time.monotonic() - writer.opened_at


class UsageRecorder:
    """Turns a finished model call into a usage record when the spec says it belongs in the log."""

    def __init__(self, spec: FleetSpec, prices: PriceBook, usage_log: UsageLog) -> None:
        self.spec, self.prices, self.usage_log = spec, prices, usage_log

    def __call__(self, model: str, request: GenerationRequest, result: GenerationResult, pipeline: str) -> None:
        if is_logged(self.spec, model, request.specialist, pipeline or None, request.escalated_from):
            self.usage_log.record(usage_record(model, request, result, pipeline, self.prices))


def usage_record(
    model: str, request: GenerationRequest, result: GenerationResult, pipeline: str, prices: PriceBook
) -> dict[str, Any]:
    """What the conversion loop needs of one call: the task as the model saw it (messages, the specialist's
    instructions, tools and contract), the answer, and what it cost."""
    specialist = request.specialist_spec
    contract = request.contract or (contract_from_spec(specialist.output) if specialist else None)
    tokens = result.prompt_tokens + result.completion_tokens
    return {
        "v": RECORD_VERSION,
        "time": time.time(),
        "request_id": request.request_id,
        "model": model,
        "specialist": request.specialist,
        "pipeline": pipeline or None,
        "escalated_from": request.escalated_from,
        "escalation_reason": request.escalation_reason,
        "instructions": specialist.instructions if specialist and specialist.instructions else None,
        "messages": request.messages,
        "tools": _tools(request),
        "contract": asdict(contract) if contract is not None else None,
        "answer": result.text,
        "tool_calls": [asdict(call) for call in result.tool_calls],
        "finish_reason": result.finish_reason,
        "error": result.error.kind if result.error else None,
        "tokens_in": result.prompt_tokens,
        "tokens_out": result.completion_tokens,
        "cost": prices.cost(model, tokens),
    }


def _tools(request: GenerationRequest) -> dict[str, Any] | None:
    if request.tools is None:
        return None
    return {"choice": request.tools.choice, "tools": [asdict(tool) for tool in request.tools.tools]}
