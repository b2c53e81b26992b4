"""Prompt caching for the in-process backends: the work done for a prefix is kept and reused.

A conversation's next turn, an agent's next step and a few-shot evaluation resend the same long
prefix; :class:`PromptCache` keeps the runtime's state (its KV cache) for recent calls, keyed by
the token ids that state holds, and hands the entry sharing the longest prefix with a new prompt
back to the runtime, which then computes only the rest. Entries are kept in least-recently-used
order within a byte budget (``0`` turns the cache off).

Exactness comes from the key: only ids that are equal, position for position, are reused, so a
history edited in the middle reuses only what comes before the edit, and thinking that was
stripped from an answer is not in the next turn's prompt (the template renders the history
without it), so the state after it is not reused either.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = [
    "MIN_REUSE",
    "CacheStats",
    "PromptCache",
    "RuntimeCache",
    "common_prefix",
]

State = TypeVar("State")

#: The in-process backends' ``min_reuse``: a taken entry is cut to the shared prefix, so an
#: unrelated prompt that shares only the chat header (a few tokens) must not take, and destroy,
#: a long conversation's state.
MIN_REUSE = 16


def common_prefix(first: Sequence[int], second: Sequence[int]) -> int:
    """How many leading ids ``first`` and ``second`` share."""
    limit = min(len(first), len(second))
    index = 0
    # Compare in slices: equal slices are checked at C speed.
    step = 256
    while index + step <= limit and first[index : index + step] == second[index : index + step]:
        index += step
    while index < limit and first[index] == second[index]:
        index += 1
    return index


@dataclass
class CacheStats:
    """What the cache did since the backend was built.

    Attributes
    ----------
    calls
        Lookups made.
    hits
        Lookups that reused at least one token.
    reused_tokens
        Prompt tokens served from the cache instead of being computed.
    evicted
        Entries dropped to stay within the budget (states larger than the whole budget, never
        kept, included).
    ahead_tokens
        Tokens computed ahead of a next turn while the backend was idle (an answer as the
        history renders it, see :mod:`~qwen_backends.backends.next_turn`); their lookups are
        not counted in the fields above.
    """

    calls: int = 0
    hits: int = 0
    reused_tokens: int = 0
    evicted: int = 0
    ahead_tokens: int = 0


class PromptCache(Generic[State]):
    """An LRU of runtime states keyed by the token ids they hold, bounded by bytes.

    Parameters
    ----------
    budget_bytes
        Most bytes of state kept; ``0`` keeps nothing (every lookup misses).
    min_reuse
        An entry is taken only when it shares at least this many ids with the prompt (or all
        of its own ids, when it holds fewer).
    """

    def __init__(self, budget_bytes: int, min_reuse: int = 1) -> None:
        self.budget_bytes = budget_bytes
        self.min_reuse = min_reuse
        self.stats = CacheStats()
        self._entries: OrderedDict[tuple[int, ...], tuple[State, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether the budget allows any entry."""
        return self.budget_bytes > 0

    @property
    def used_bytes(self) -> int:
        """Bytes of the entries kept now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def take(
        self, prompt_ids: Sequence[int], usable: int, longer_than: int = 0, *, counted: bool = True
    ) -> tuple[State | None, int]:
        """Remove and return the entry sharing the longest prefix with ``prompt_ids``.

        Parameters
        ----------
        prompt_ids
            The new prompt.
        usable
            At most this many ids may be reused (a runtime needs at least the last prompt id
            computed to get the next token's logits).
        longer_than
            Only an entry sharing more than this many ids is taken (a runtime that already
            holds a state sharing that many, such as llama.cpp's live context, keeps its own).
        counted
            Whether the lookup counts in :attr:`stats` (work done ahead is counted apart, in
            :meth:`record_ahead`).

        Returns
        -------
        tuple
            ``(state, length)``: the state, which holds at least ``length`` ids equal to the
            prompt's first ``length`` (the runtime cuts it to ``length``), or ``(None, 0)``.
        """
        with self._lock:
            self.stats.calls += counted
            best_key, best = None, longer_than
            for key in self._entries:
                shared = min(common_prefix(key, prompt_ids), usable)
                if shared > best and shared >= min(self.min_reuse, len(key)):
                    best_key, best = key, shared
            if best_key is None:
                return None, 0
            state, size = self._entries.pop(best_key)
            self._bytes -= size
            if counted:
                self.stats.hits += 1
                self.stats.reused_tokens += best
            return state, best

    def put(self, ids: Sequence[int], state: State, size: int) -> None:
        """Keep ``state`` (``size`` bytes), which holds ``ids``; evict the oldest to fit."""
        if not self.enabled or not ids:
            return
        if size > self.budget_bytes:
            with self._lock:
                self.stats.evicted += 1
            return
        key = tuple(ids)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (state, size)
            self._bytes += size
            while self._bytes > self.budget_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
                self.stats.evicted += 1

    def record_hit(self, reused: int) -> None:
        """Count ``reused`` tokens of a lookup that took no entry but was served by the
        runtime's own live state (llama.cpp's context); :meth:`take` counted the lookup."""
        with self._lock:
            if reused > 0:
                self.stats.hits += 1
                self.stats.reused_tokens += reused

    def record_ahead(self, computed: int) -> None:
        """Count ``computed`` tokens computed ahead of a next turn."""
        with self._lock:
            self.stats.ahead_tokens += computed

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0


class RuntimeCache(Generic[State]):
    """Base of a runtime's prompt cache: its :class:`PromptCache` of states as :attr:`lru`.

    Parameters
    ----------
    budget_bytes
        Most bytes of states kept (``0``: off).
    """

    def __init__(self, budget_bytes: int) -> None:
        self.lru: PromptCache[State] = PromptCache(budget_bytes, MIN_REUSE)

    @property
    def enabled(self) -> bool:
        """Whether caching is on."""
        return self.lru.enabled

    @property
    def stats(self) -> CacheStats:
        """What the cache did (lookups, hits, tokens reused, evictions)."""
        return self.lru.stats

    @property
    def used_bytes(self) -> int:
        """Bytes of the entries kept now."""
        return self.lru.used_bytes
