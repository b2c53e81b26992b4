"""Grammar-constrained decoding for transformers (hf / unsloth): a logits processor.

:class:`GrammarLogitsProcessor` is an ordinary transformers logits processor around the
runtime-neutral engine of :mod:`qwen_backends.grammar`: one
:class:`~qwen_backends.grammar.GrammarMatcher` per row, advanced by each row's newest token,
whose mask sets every forbidden logit to ``-inf``. It runs in the custom processor list, which
transformers applies *before* temperature, top-k, top-p and min-p, so whatever the sampler does
with the remaining logits it can only draw an allowed token. ``english_only`` is folded into the
same mask (the matcher's ``blocked``): a token must be allowed by both; where the schema itself
requires a token outside the English tier (an ``enum`` value in another script), the grammar
wins for that step rather than leaving nothing to sample.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from qwen_backends.grammar import CompiledGrammar, GrammarEngine, GrammarMatcher

__all__ = ["GrammarLogitsProcessor"]

logger = logging.getLogger(__name__)


class GrammarLogitsProcessor:
    """Mask every token the schema's grammar forbids (a transformers logits processor).

    Build a new one for every decode call (it keeps per-row state); put it in
    ``logits_processor`` so it runs before the sampler.

    Parameters
    ----------
    engine
        The grammar engine bound to the model's tokenizer.
    compiled
        ``engine.compile(response_format)``.
    blocked
        Optional boolean mask over the vocabulary (numpy or torch), ``True`` for tokens that
        must not be sampled either (``english_only``).

    Attributes
    ----------
    failed_rows
        Rows whose sampled token the grammar rejected (never expected: that would mean a
        sampler ignored the mask); they run unconstrained and their output is reported by
        validation.
    """

    def __init__(
        self, engine: GrammarEngine, compiled: CompiledGrammar, blocked: Any = None
    ) -> None:
        self.engine = engine
        self.compiled = compiled
        self.blocked = None if blocked is None else _numpy(blocked)
        self.failed_rows: set[int] = set()
        self._matchers: list[GrammarMatcher] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Return ``scores`` with disallowed tokens at ``-inf`` (a new tensor)."""
        import numpy as np

        from qwen_backends.grammar import apply_mask

        rows = scores.shape[0]
        if self._matchers is None:
            self._matchers = [self.engine.matcher(self.compiled, self.blocked) for _ in range(rows)]
        else:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                if not self._matchers[row].accept(token) and row not in self.failed_rows:
                    logger.warning(
                        "row %d: the sampler drew token %d, which the grammar forbids; "
                        "the row continues unconstrained",
                        row,
                        token,
                    )
                    self.failed_rows.add(row)
        words = np.stack([matcher.allowed_words() for matcher in self._matchers])
        return apply_mask(scores, words)


def _numpy(mask: Any) -> Any:
    """A boolean numpy copy of ``mask`` (a numpy array or a CPU/GPU torch tensor)."""
    import numpy as np

    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask, dtype=bool)
