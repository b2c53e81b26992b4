"""The runtime half of scoring: log-softmax rows at the scored positions, per runtime.

Each function returns a :data:`~qwen_backends.scoring.RowsFunction` for one loaded model; the
rest of scoring is shared (:func:`qwen_backends.scoring.score_locally`). None of them computes
the vocabulary-wide logits of a context position: the model's body runs over the whole input,
the output layer only over the scored positions, :data:`~qwen_backends.scoring.CHUNK_ROWS` at a
time.

- :func:`transformers_rows`: one forward pass of the decoder per batch, the output embedding
  applied to slices of its last hidden states; several spans that share a prefix (the choices of
  one question) run the prefix once and the rest as one batch on a copy of its cache.
- :func:`mlx_rows`: the same on mlx-lm's model (``model.model`` then the output layer).
- :func:`llamacpp_rows`: llama.cpp's batch API, asking for logits only at the scored positions
  (``llama_batch.logits`` flags), so ``logits_all`` stays off at load; llama.cpp's output buffer
  never holds more than :data:`LLAMACPP_ROWS` rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from qwen_backends.scoring import CHUNK_ROWS, RowsFunction, Span

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = [
    "BATCH_SPANS",
    "BATCH_TOKENS",
    "LLAMACPP_ROWS",
    "common_prefix",
    "llamacpp_rows",
    "log_softmax",
    "mlx_rows",
    "transformers_rows",
]

#: Most scored positions per llama.cpp decode: its output buffer holds their logits, copied out
#: row by row (64 x 151,936 float32 = 39 MB).
LLAMACPP_ROWS = 64
#: Most spans, and most input tokens, one transformers forward pass takes.
BATCH_SPANS = 16
BATCH_TOKENS = 16_384


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise natural-log softmax of float32 ``logits`` (numpy), in float32."""
    import numpy as np

    rows = logits.astype(np.float32, copy=False)
    shifted = rows - rows.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def common_prefix(spans: list[Span]) -> int:
    """Tokens every span starts with, short of each span's first needed row.

    The prefix runs once; every span keeps at least the position of its first row, so its
    hidden state comes from the batched part.
    """
    limit = min(span.first_row for span in spans)
    first = spans[0].ids
    length = 0
    while length < limit and all(span.ids[length] == first[length] for span in spans):
        length += 1
    return length


def _ranges(span: Span) -> Iterator[tuple[int, int]]:
    """The span's rows in pieces of at most :data:`CHUNK_ROWS`."""
    for start in range(span.first_row, span.stop_row, CHUNK_ROWS):
        yield start, min(start + CHUNK_ROWS, span.stop_row)


def _chunks(pieces: list[tuple[int, Any]]) -> Iterator[list[tuple[int, Any]]]:
    """Consecutive pieces grouped to at most :data:`CHUNK_ROWS` rows a group."""
    group: list[tuple[int, Any]] = []
    rows = 0
    for piece in pieces:
        if group and rows + len(piece[1]) > CHUNK_ROWS:
            yield group
            group, rows = [], 0
        group.append(piece)
        rows += len(piece[1])
    if group:
        yield group


def _batches(spans: list[Span]) -> Iterator[list[int]]:
    """Indices of ``spans`` in groups for one forward pass each, in order."""
    group: list[int] = []
    tokens = 0
    for index, span in enumerate(spans):
        size = len(span.ids)
        if group and (len(group) >= BATCH_SPANS or tokens + size > BATCH_TOKENS):
            yield group
            group, tokens = [], 0
        group.append(index)
        tokens += size
    if group:
        yield group


# -- transformers ---------------------------------------------------------------------------------


def transformers_rows(model: Any, device: torch.device, pad_id: int) -> RowsFunction:
    """Rows from a transformers causal LM (a ``PreTrainedModel`` with an output embedding)."""

    def rows(spans: list[Span]) -> Iterator[tuple[int, np.ndarray]]:
        import torch

        decoder = model.get_decoder()
        head = model.get_output_embeddings()
        with torch.inference_mode():
            for group in _batches(spans):
                members = [spans[i] for i in group]
                hidden, offset = _transformers_hidden(decoder, members, device, pad_id)
                # The rows of every span of the group go through the output layer together, a
                # chunk at a time: its weight (vocabulary x hidden) is read once per chunk.
                pieces = [
                    (index, hidden[slot, start - offset : stop - offset])
                    for slot, index in enumerate(group)
                    for start, stop in _ranges(spans[index])
                ]
                for chunk in _chunks(pieces):
                    states = torch.cat([piece for _, piece in chunk])
                    logits = head(states).float()
                    # In place: a fresh 256 x 151,936 result costs more in page faults than the
                    # log-softmax itself (54 ms against 11 ms here).
                    scores = torch.log_softmax(logits, dim=-1, out=logits).cpu().numpy()
                    at = 0
                    for index, piece in chunk:
                        yield index, scores[at : at + len(piece)]
                        at += len(piece)

    return rows


def _transformers_hidden(
    decoder: Any, spans: list[Span], device: torch.device, pad_id: int
) -> tuple[torch.Tensor, int]:
    """Last hidden states of ``spans`` (right-padded batch) and the position of column 0.

    Right padding needs no attention mask: causal attention never lets a real token see the
    padding after it.
    """
    import torch

    shared = common_prefix(spans) if len(spans) > 1 else 0
    cache = None
    if shared:
        prefix = torch.tensor([spans[0].ids[:shared]], dtype=torch.long, device=device)
        cache = decoder(input_ids=prefix, use_cache=True).past_key_values
        cache.batch_repeat_interleave(len(spans))
    width = max(span.stop_row for span in spans) - shared
    batch = torch.tensor(
        [
            [*span.ids[shared : span.stop_row], *[pad_id] * (width - span.stop_row + shared)]
            for span in spans
        ],
        dtype=torch.long,
        device=device,
    )
    output = decoder(input_ids=batch, past_key_values=cache, use_cache=cache is not None)
    return output.last_hidden_state, shared


# -- mlx ----------------------------------------------------------------------------------------


def mlx_rows(model: Any) -> RowsFunction:
    """Rows from an mlx-lm model (its body ``model.model`` and its output layer)."""

    def rows(spans: list[Span]) -> Iterator[tuple[int, np.ndarray]]:
        import mlx.core as mx
        import numpy as np

        tied = bool(getattr(getattr(model, "args", None), "tie_word_embeddings", False))

        def head(states: Any) -> Any:
            return model.model.embed_tokens.as_linear(states) if tied else model.lm_head(states)

        for index, span in enumerate(spans):
            hidden = model.model(mx.array([span.ids[: span.stop_row]]))
            for start, stop in _ranges(span):
                logits = head(hidden[0, start:stop]).astype(mx.float32)
                scores = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
                yield index, np.array(scores, copy=False)

    return rows


# -- llama.cpp ------------------------------------------------------------------------------------


def llamacpp_rows(llama: Any) -> RowsFunction:
    """Rows from a ``llama_cpp.Llama`` loaded with ``logits_all=False``.

    Its context's memory is cleared before and after, and ``llama.reset()`` called, so the
    next ``Llama.generate`` evaluates its prompt from scratch.
    """

    def rows(spans: list[Span]) -> Iterator[tuple[int, np.ndarray]]:
        import llama_cpp

        n_batch = int(llama_cpp.llama_n_batch(llama.ctx))
        batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        try:
            for index, span in enumerate(spans):
                for chunk in _llamacpp_span(llama, batch, span, n_batch):
                    yield index, chunk
        finally:
            llama_cpp.llama_batch_free(batch)
            _clear(llama)

    return rows


def _llamacpp_span(llama: Any, batch: Any, span: Span, n_batch: int) -> Iterator[np.ndarray]:
    """Decode one span: unscored positions n_batch at a time, scored ones LLAMACPP_ROWS at a
    time."""
    import llama_cpp
    import numpy as np

    _clear(llama)
    inputs = span.ids[: span.stop_row]
    n_vocab = int(llama.n_vocab())
    position = 0
    while position < len(inputs):
        wanted = position >= span.first_row
        size = LLAMACPP_ROWS if wanted else span.first_row - position
        size = min(size, n_batch, len(inputs) - position)
        flagged = []
        for slot in range(size):
            at = position + slot
            batch.token[slot] = inputs[at]
            batch.pos[slot] = at
            batch.n_seq_id[slot] = 1
            batch.seq_id[slot][0] = 0
            batch.logits[slot] = at >= span.first_row
            if at >= span.first_row:
                flagged.append(slot)
        batch.n_tokens = size
        status = llama_cpp.llama_decode(llama.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")
        if flagged:
            logits = np.empty((len(flagged), n_vocab), dtype=np.float32)
            for row, slot in enumerate(flagged):
                pointer = llama_cpp.llama_get_logits_ith(llama.ctx, slot)
                logits[row] = np.ctypeslib.as_array(pointer, shape=(n_vocab,))
            yield log_softmax(logits)
        position += size


def _clear(llama: Any) -> None:
    import llama_cpp

    memory = llama_cpp.llama_get_memory(llama.ctx)
    if memory is not None:
        llama_cpp.llama_memory_clear(memory, True)
    llama.reset()
