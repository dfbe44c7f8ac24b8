"""Checks of a LoRA adapter's files against the model it is declared for, where the files are reachable.

Run by ``slmfleet validate`` and ``slmfleet up`` (not by the router, whose node may not hold the files), and by a
model replica on each adapter it fetches: a missing ``adapter_config.json``, a rank above the model's
``max_lora_rank``, a base model named in the adapter's config that is not the model's (a same-shaped other base,
such as SmolLM2's base model under its Instruct model, loads without a word and answers badly), or weights shaped
for another base model are spec errors with the field path, the value and the fix. The shapes come from the
safetensors header (a JSON block at the start of the file), so nothing here imports torch, peft or vllm.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from cluster.memory import module_dims, read_model_config, text_config
from cluster.model_store import CONVERSION_FORMAT
from cluster.spec import AdapterSpec, FleetSpec, ModelSpec
from cluster.spec_errors import SpecIssue

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HEADER_LENGTH_BYTES = 8  # safetensors: a little-endian u64 header size, then the JSON header
MATRIX_DIMS = 2
MAX_HEADER_BYTES = 64 * 1024 * 1024
# peft's tensor names: ...layers.<i>.<block>.<module>.lora_A.weight (shape [r, in]) / lora_B.weight ([out, r])
_LORA_TENSOR = re.compile(r"layers\.(?P<layer>\d+)\..*?(?P<module>[a-z_]+)\.lora_(?P<part>[AB])(?:\.[a-z_]+)?\.weight$")


class AdapterFileError(ValueError):
    """An adapter folder that cannot be used; the message says what is wrong."""


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """peft's ``adapter_config.json`` of ``folder``; raises :class:`AdapterFileError` when absent or unreadable."""
    path = folder / ADAPTER_CONFIG
    if not folder.is_dir():
        raise AdapterFileError(f"no folder at {folder}")
    if not path.is_file():
        raise AdapterFileError(f"{folder} has no {ADAPTER_CONFIG} (not a peft adapter folder)")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterFileError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise AdapterFileError(f"{path} is not a JSON object")
    if str(data.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterFileError(f"{path} describes a {data.get('peft_type')} adapter; only LoRA adapters are served")
    return data


def adapter_rank(config: dict[str, Any]) -> int:
    """The largest rank the adapter uses (``r``, or a per-module ``rank_pattern`` above it)."""
    ranks = [int(config.get("r") or 0), *(int(r) for r in (config.get("rank_pattern") or {}).values())]
    return max(ranks)


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, from the header of a safetensors file (the tensors themselves are not read)."""
    with open(path, "rb") as handle:
        prefix = handle.read(HEADER_LENGTH_BYTES)
        if len(prefix) != HEADER_LENGTH_BYTES:
            raise AdapterFileError(f"{path} is too short to be a safetensors file")
        (size,) = struct.unpack("<Q", prefix)
        if size > MAX_HEADER_BYTES:
            raise AdapterFileError(f"{path} has a {size}-byte header: not a safetensors file")
        try:
            header = json.loads(handle.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise AdapterFileError(f"{path} has no readable safetensors header") from None
    return {name: list(info["shape"]) for name, info in header.items() if name != "__metadata__"}


def shape_mismatches(shapes: dict[str, list[int]], base: dict[str, Any]) -> list[str]:
    """Tensors that do not fit ``base``: a layer it does not have, or a width other than its module's."""
    dims = module_dims(base)
    layers = int(text_config(base)["num_hidden_layers"])
    problems = []
    for name, shape in shapes.items():
        match = _LORA_TENSOR.search(name)
        if match is None or match["module"] not in dims or len(shape) != MATRIX_DIMS:
            continue
        if int(match["layer"]) >= layers:
            problems.append(f"{name}: layer {match['layer']}, the base model has {layers} layers")
            continue
        features_in, features_out = dims[match["module"]]
        width = shape[1] if match["part"] == "A" else shape[0]
        want = features_in if match["part"] == "A" else features_out
        if width != want:
            problems.append(f"{name}: width {width}, the base model's {match['module']} has {want}")
    return problems


def model_name(reference: str) -> str:
    """A model reference's last part, lowercased: ``bundled:smollm2-135m-instruct``,
    ``HuggingFaceTB/SmolLM2-135M-Instruct``, ``/srv/models/smollm2-135m-instruct/`` and the bundled model's
    converted folder (``.../smollm2-135m-instruct.hf-fp32-v1``, what peft records of an adapter trained on it) all
    name the same one."""
    name = reference.removeprefix("bundled:").rstrip("/").rsplit("/", 1)[-1].lower()
    return name.removesuffix(f".{CONVERSION_FORMAT}")


def check_adapter_folder(
    folder: Path, model: ModelSpec, base: dict[str, Any] | None, trained_on: str | None = None
) -> None:
    """Raise :class:`AdapterFileError` when the adapter at ``folder`` cannot run on ``model`` (``base``: the
    model's config.json, when reachable; ``trained_on``: the spec's word that the adapter's recorded base is this
    model under another name)."""
    config = read_adapter_config(folder)
    rank = adapter_rank(config)
    limit = model.lora.max_lora_rank if model.lora else 0
    if rank > limit:
        raise AdapterFileError(f"the adapter's rank is {rank}, above the model's max_lora_rank {limit}")
    recorded = config.get("base_model_name_or_path")
    if recorded and recorded != trained_on and model_name(str(recorded)) != model_name(model.source):
        raise AdapterFileError(f"the adapter names {recorded} as its base model, not this model ({model.source})")
    weights = folder / ADAPTER_WEIGHTS
    if base is None or not weights.is_file():
        return
    problems = shape_mismatches(safetensors_shapes(weights), base)
    if problems:
        trained_on = config.get("base_model_name_or_path") or "another model"
        raise AdapterFileError(
            f"the adapter was trained on {trained_on}, not this base model ({len(problems)} tensors do not fit, "
            f"e.g. {problems[0]})"
        )


def adapter_file_issues(spec: FleetSpec) -> list[SpecIssue]:
    """Every local adapter of the spec checked against its model (object-store adapters are checked when a
    replica fetches them, and by the registration probe)."""
    issues = []
    for name, specialist in spec.specialists.items():
        adapter, model = specialist.adapter, spec.models.get(specialist.model)
        if adapter is None or model is None or not adapter.is_local():
            continue
        try:
            check_adapter_folder(adapter.local_path(), model, read_model_config(model.source), adapter.trained_on)
        except AdapterFileError as exc:
            issues.append(SpecIssue(f"specialists.{name}.adapter.source", adapter.source, str(exc), _fix(exc, model)))
    return issues


def _fix(exc: AdapterFileError, model: ModelSpec) -> str:
    text = str(exc)
    if "rank" in text and model.lora is not None:
        return "raise the model's lora.max_lora_rank, or train the adapter at a lower rank"
    if "as its base model" in text:
        named = text.split("names ", 1)[1].split(" as its base model", 1)[0]
        return (
            f"point source at an adapter trained on {model.source}, or set adapter.trained_on: '{named}' "
            "if that is this model under another name"
        )
    if "trained on" in text:
        return f"point source at an adapter trained on this model ({model.source})"
    return f"point source at a folder saved by peft's save_pretrained (it holds {ADAPTER_CONFIG})"


def local_adapter_notes(spec: FleetSpec) -> list[str]:
    """Warnings for local adapter paths a multi-node fleet relies on: the folder must exist on every node."""
    notes = []
    for name, specialist in spec.specialists.items():
        adapter = specialist.adapter
        if adapter is None or not adapter.is_local():
            continue
        model = spec.models.get(specialist.model)
        pool = spec.pools.get(model.pool) if model is not None and model.pool else None
        many_nodes = pool.max_nodes > 1 if pool is not None else any(p.max_nodes > 1 for p in spec.pools.values())
        if many_nodes:
            notes.append(
                f"specialists.{name}.adapter.source: {adapter.source} is a local path on a fleet of several nodes: "
                "it must exist on every node that serves the model (a shared volume), or use s3:// or gs://"
            )
    return notes


__all__ = ["AdapterFileError", "AdapterSpec", "adapter_file_issues", "check_adapter_folder", "local_adapter_notes"]
