"""OpenTelemetry set-up per process, chosen by the standard ``OTEL_*`` variables; nothing at all when unset.

- ``OTEL_TRACES_EXPORTER``: ``console``, ``otlp`` (needs ``opentelemetry-exporter-otlp``) or ``none`` (default);
  ``OTEL_SERVICE_NAME`` and the exporter's own ``OTEL_EXPORTER_OTLP_*`` variables apply as usual.
- ``SLMFLEET_TRACE_FILE``: also append every finished span as one JSON line to this file (all processes of a
  local fleet share it); used by the e2e tests to see the span tree across Serve replicas.

Without either, no provider is installed and the OpenTelemetry API's no-op tracer costs next to nothing. Trace
context crosses Serve handle calls inside :class:`GenerationRequest.trace_context` (W3C traceparent).

Spans leave through a ``BatchSpanProcessor``: ending a span only queues it, and a background thread exports
batches (every ``OTEL_BSP_SCHEDULE_DELAY`` ms, 5000 by default), so a replica's event loop, which serves every
request, never waits for an exporter, a network hop or the trace file's lock (taken once per batch).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Sequence

from opentelemetry import propagate, trace
from opentelemetry.context import Context

log = logging.getLogger(__name__)
TRACE_FILE_ENV = "SLMFLEET_TRACE_FILE"
_configured = False


def configure_tracing(service_name: str) -> None:
    """Install a tracer provider for this process once, if the environment asks for any exporter."""
    global _configured  # noqa: PLW0603 - one provider per process is OpenTelemetry's own rule
    if _configured:
        return
    _configured = True
    exporters = _exporters_from_env()
    if not exporters:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # process.pid tells replicas of one deployment apart (which router replica served a request)
    provider = TracerProvider(resource=Resource.create({"service.name": service_name, "process.pid": os.getpid()}))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def _exporters_from_env() -> list[object]:
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "none").split(",")]
    exporters: list[object] = []
    for name in names:
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                log.warning("OTEL_TRACES_EXPORTER=otlp needs: pip install opentelemetry-exporter-otlp")
                continue
            exporters.append(OTLPSpanExporter())
    if path := os.environ.get(TRACE_FILE_ENV):
        exporters.append(JsonLinesSpanExporter(path))
    return exporters


class JsonLinesSpanExporter:
    """Appends spans as JSON lines under a file lock (one write per batch), so several processes share one file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[object]) -> object:
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = "".join(span.to_json(indent=None) + "\n" for span in spans)  # type: ignore[attr-defined]
        with open(self.path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.write(lines)
            fcntl.flock(handle, fcntl.LOCK_UN)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def current_context_carrier() -> dict[str, str]:
    """The active trace context as W3C headers, to ride along with a request to another process."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def context_from_carrier(carrier: dict[str, str] | None) -> Context:
    return propagate.extract(carrier or {})
