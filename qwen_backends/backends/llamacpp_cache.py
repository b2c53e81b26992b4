"""Prompt caching for the llamacpp backend: llama.cpp's live context plus saved sequence states.

What llama-cpp-python does on its own (0.3.36, measured with this project's token loop): one
``Llama`` keeps the ids its context holds (``input_ids[:n_tokens]``: the last prompt and the
answer's tokens but the last) and ``Llama.generate`` keeps the longest prefix they share with the
next prompt, evaluating only the rest. So a conversation's next turn on one instance already
costs only its new tokens, but a second conversation in between throws the first one's work away.

:class:`LlamaPromptCache` makes that explicit and adds several conversations:

- the live context is the first slot: a new prompt keeps the prefix it shares with it (the glue
  cuts the context itself, so the count reported as ``cached_tokens`` is exact and a prompt
  identical to the held ids still recomputes its last token: fresh logits for sampling);
- before a prompt that shares less would overwrite a worthwhile tail of the live context, that
  context's KV cells are saved (``llama_state_seq_get_data`` for sequence 0: the keys and values
  of its positions only, no logits) into the shared :class:`PromptCache`, keyed by its ids;
- an entry there sharing a longer prefix than the live context is taken out and restored
  (``llama_state_seq_set_data``), then cut to the shared prefix.

``Llama.save_state`` is not used: it also copies up to ``n_batch`` rows of float32 logits
(151,936 floats a row, ~300 MB at 512 rows) with every state.

Exactness: restored cells are byte copies of those computed before, and llama.cpp computes each
position from the cells before it, so answers match a cold start token for token on the CPU
(greedy and seeded; tested in tests/backends/test_prompt_cache.py).
"""

from __future__ import annotations

import ctypes
from typing import Any

from qwen_backends.backends.prompt_cache import RuntimeCache, common_prefix

__all__ = ["KEEP_TAIL", "LlamaPromptCache", "SavedState"]

#: A live context is saved before being cut only when at least this many of its positions would
#: be lost (a next turn of the same conversation loses none or one; saving those costs a copy).
KEEP_TAIL = 32


class SavedState:
    """The KV cells of sequence 0 of a llama.cpp context, as bytes.

    Parameters
    ----------
    data
        What ``llama_state_seq_get_data`` wrote.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return len(self.data)


class LlamaPromptCache(RuntimeCache[SavedState]):
    """The prompt cache of one ``llama_cpp.Llama``: its live context and saved states.

    Parameters
    ----------
    llama
        The ``Llama`` whose context is reused (one generation at a time: the backend's lock).
    budget_bytes
        Most bytes of saved states; ``0`` turns caching off (every call starts from an empty
        context, as llama-cpp-python does after ``reset()``).

    Attributes
    ----------
    lru
        The saved states, an LRU keyed by the ids each holds.
    """

    def __init__(self, llama: Any, budget_bytes: int) -> None:
        self.llama = llama
        super().__init__(budget_bytes)

    def prepare(self, prompt_ids: list[int], *, ahead: bool = False) -> int:
        """Leave the context holding the longest reusable prefix of ``prompt_ids``.

        ``Llama.generate(prompt_ids, reset=True)`` then evaluates only the rest.

        Parameters
        ----------
        ahead
            For a next turn's history computed ahead: the live context it replaces is not
            saved (it holds the answer as generated, which no next prompt repeats past the
            answer's header) and the lookup is not counted in :attr:`stats`.

        Returns
        -------
        int
            The prompt tokens served from the cache (at most ``len(prompt_ids) - 1``).
        """
        llama = self.llama
        if not self.enabled:
            llama.reset()
            return 0
        usable = len(prompt_ids) - 1
        live = self.held()
        shared = min(common_prefix(live, prompt_ids), usable)
        if len(live) - shared >= KEEP_TAIL and not ahead:
            self._save(live)
        state, taken = self.lru.take(prompt_ids, usable, longer_than=shared, counted=not ahead)
        if state is not None:
            shared = taken if self._restore(state, prompt_ids[:taken]) else 0
        elif not ahead:
            self.lru.record_hit(shared)
        return self._cut(shared)

    def extend(self, ids: list[int]) -> None:
        """Leave the live context holding ``ids``, computing what it does not hold yet (a next
        turn's history computed ahead)."""
        kept = self.prepare(ids, ahead=True)
        self.llama.eval(ids[kept:])
        self.lru.record_ahead(len(ids) - kept)

    def held(self) -> list[int]:
        """The ids the live context holds."""
        return [int(token) for token in self.llama.input_ids[: self.llama.n_tokens]]

    def clear(self, *, live: bool = True) -> None:
        """Drop every saved state and, with ``live``, the live context's reusable ids."""
        self.lru.clear()
        if live:
            self.llama.reset()

    def _save(self, ids: list[int]) -> None:
        import llama_cpp

        ctx = self.llama.ctx
        size = int(llama_cpp.llama_state_seq_get_size(ctx, 0))
        if size <= 0 or size > self.lru.budget_bytes:
            return
        buffer = (ctypes.c_uint8 * size)()
        written = int(llama_cpp.llama_state_seq_get_data(ctx, buffer, size, 0))
        if written <= 0:
            return
        state = SavedState(bytes(buffer)[:written])
        self.lru.put(ids, state, state.nbytes)

    def _restore(self, state: SavedState, ids: list[int]) -> bool:
        """Load ``state`` into sequence 0; its first ``len(ids)`` ids are ``ids``."""
        import llama_cpp

        llama = self.llama
        llama.reset()
        llama._ctx.kv_cache_clear()
        buffer = (ctypes.c_uint8 * len(state.data)).from_buffer_copy(state.data)
        if int(llama_cpp.llama_state_seq_set_data(llama.ctx, buffer, len(state.data), 0)) == 0:
            llama._ctx.kv_cache_clear()
            return False
        llama.input_ids[: len(ids)] = ids
        llama.n_tokens = len(ids)
        return True

    def _cut(self, keep: int) -> int:
        """Keep the first ``keep`` positions of the context (all of them go at 0)."""
        llama = self.llama
        if keep > 0 and llama._ctx.kv_cache_seq_rm(-1, keep, -1):
            llama.n_tokens = keep
            # Logits of a cut context are stale: llama-cpp-python must decode before sampling.
            llama._requires_eval = True
            return keep
        llama.reset()
        return 0
