"""The in-process backends' one token loop: :class:`LocalBackend` (hf, unsloth, llamacpp, mlx).

A runtime that holds the model in this process supplies three things and nothing else:

- :meth:`LocalBackend._load` -- load the model and set :attr:`LocalBackend.tokenizer` (the
  Hugging Face tokenizer that renders prompts and decodes answers) and
  :attr:`LocalBackend.vocab_rows` (the logit rows, 151,936 for Qwen3);
- :meth:`LocalBackend._tokens` -- the generated ids for one prompt (an iterator; closing it stops
  the runtime), with every sampling value mapped explicitly and its logits hooks (presence
  penalty, :meth:`LocalBackend.english_blocked`, the grammar) applied;
- :attr:`LocalBackend.context_window` and :attr:`LocalBackend.context_hint`.

Everything else is written once here: prompt rendering with the conversation's tools and the
``allow_control_tokens`` setting, the context check, the Qwen3 end-token check, one generation
at a time (:class:`GenerationLock`), the visible-text pipeline and the final
:class:`~qwen_backends.results.Generation`
(:class:`~qwen_backends.backends.token_loop.AnswerAssembler`), generate as the drain of stream,
async streams on one dedicated thread, error translation with the partial text, the English
mask, and the ``close()`` template (:meth:`LocalBackend._release`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Container, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from qwen_backends.backends.base import ModelBackend, check_open
from qwen_backends.backends.next_turn import AheadWorker, next_turn_ids
from qwen_backends.backends.token_loop import AnswerAssembler, PendingStep, Step
from qwen_backends.chat import Message, render_prompt, render_prompt_ids
from qwen_backends.errors import (
    ContextLengthError,
    GenerationError,
    ModelNotFoundError,
    QwenBackendsError,
    first_line,
)
from qwen_backends.thinking import TemplateMode, template_mode

if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedTokenizerBase

    from qwen_backends.results import Generation, Request
    from qwen_backends.settings import Settings

__all__ = [
    "GenerationLock",
    "LocalBackend",
    "check_context",
    "check_open",
    "qwen_end_ids",
    "tool_kwargs",
]

#: Qwen3's turn enders: ``<|im_end|>`` (the chat's) and ``<|endoftext|>`` (the base model's).
END_TOKENS = ("<|im_end|>", "<|endoftext|>")


class LocalBackend(ModelBackend):
    """A backend that runs the model in this process and renders prompts with its tokenizer.

    Subclasses implement :meth:`_load` and :meth:`_tokens` (and may override :meth:`_release`,
    :meth:`_compile` and :meth:`_end_ids`); see the module docs. Construction loads the model,
    checks the tokenizer is Qwen3's (both end tokens, a template that can run non-thinking) and
    then calls :meth:`_prepare` for anything the runtime derives from the loaded model.

    One generation at a time per instance: a lock serialises calls (a stream holds it from its
    first piece until it is exhausted or closed; other threads wait); starting another generation
    on the thread that holds an open stream raises :class:`~qwen_backends.errors.GenerationError`
    instead of deadlocking.

    Attributes
    ----------
    tokenizer
        The Hugging Face tokenizer prompts are rendered and answers decoded with.
    vocab_rows
        The number of logits per step (the embedding rows; more than the tokenizer's entries).
    end_ids
        The ids that end an answer (``im_end_id`` and ``end_of_text_id``).
    """

    #: What the runtime is called in messages ("transformers", "llama.cpp", "mlx-lm").
    runtime: ClassVar[str] = "the runtime"
    #: How this backend's context window can grow, appended to the context error's advice.
    context_hint: ClassVar[str] = ""

    tokenizer: PreTrainedTokenizerBase
    vocab_rows: int

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._guard = GenerationLock(self.name)
        self._ahead = AheadWorker(self._guard, self.name)
        self._english_blocked_mask: np.ndarray | None = None
        self._cached_tokens = 0
        with self._attributed():
            self._load()
            try:
                self._template_mode = template_mode(self.tokenizer)
                self.im_end_id, self.end_of_text_id = self._end_token_ids()
                self.end_ids: frozenset[int] = frozenset((self.im_end_id, self.end_of_text_id))
                self._prepare()
            except BaseException:
                self._release(same_thread=False)
                raise

    def _end_token_ids(self) -> tuple[int, int]:
        """Qwen3's two end ids; a local folder without ``tokenizer.json`` is named as such (its
        partial tokenizer lacks the added tokens, which live in that file)."""
        try:
            return qwen_end_ids(self.tokenizer, self.model_name)
        except ModelNotFoundError as exc:
            folder = Path(self.model_name).expanduser()
            if folder.is_dir() and not (folder / "tokenizer.json").is_file():
                raise ModelNotFoundError(
                    f"{folder} lacks tokenizer.json (Qwen3's added tokens such as <|im_end|> "
                    "live there); copy it from Qwen3-4B's tokenizer files"
                ) from exc
            raise

    # -- what a runtime supplies ----------------------------------------------------------------

    @abstractmethod
    def _load(self) -> None:
        """Load the model; set :attr:`tokenizer` and :attr:`vocab_rows`."""

    @abstractmethod
    def _tokens(
        self, prompt_ids: list[int], request: Request, compiled: Any
    ) -> Iterator[int | Step | PendingStep]:
        """The ids the model generates after ``prompt_ids`` (called with the lock held).

        The loop stops reading at the end of the answer (end of turn, stop string,
        ``max_new_tokens``) and closes the iterator, which must then stop the runtime.
        ``compiled`` is what :meth:`_compile` returned for this request. With
        ``request.sampling.logprobs`` each id comes as a
        :class:`~qwen_backends.backends.token_loop.Step` (see
        :func:`~qwen_backends.backends.token_loop.numpy_step`) or a
        :class:`~qwen_backends.backends.token_loop.PendingStep` of
        :class:`~qwen_backends.backends.token_loop.BackgroundSteps`.
        """

    @property
    @abstractmethod
    def context_window(self) -> int:
        """Most tokens (prompt + new) one call may use."""

    def _prepare(self) -> None:
        """Derive what generation needs from the loaded model (after the tokenizer checks)."""

    def _compile(self, request: Request) -> Any:
        """Work done when a call is made, before the lock is taken (e.g. a grammar); errors
        raise from ``generate()`` / ``stream()`` themselves. The default does nothing."""
        return None

    def _end_ids(self, request: Request, compiled: Any) -> Container[int]:
        """The ids that end this request's answer (default :attr:`end_ids`)."""
        return self.end_ids

    def _release(self, *, same_thread: bool) -> None:
        """Drop the runtime's objects on :meth:`close`. ``same_thread`` is ``True`` when a stream
        of the closing thread is still open (it keeps its own references and finishes)."""

    def _prepares_next_turn(self) -> bool:
        """Whether each answer is computed ahead, while the backend is idle, as the next
        turn's history (:mod:`~qwen_backends.backends.next_turn`): a runtime whose prompt
        cache is on and whose ``prompt_cache_next_turn`` setting is true. Default ``False``."""
        return False

    def _extend_cache(self, ids: list[int]) -> None:
        """Compute ``ids`` into the prompt cache, from the longest prefix it holds, and keep
        the state (with the lock held; only when :meth:`_prepares_next_turn`)."""

    # -- the interface --------------------------------------------------------------------------

    def template_mode(self) -> TemplateMode:
        """The loaded tokenizer's template mode (hybrid or non-thinking)."""
        return self._template_mode

    def _prompt_ids(self, messages: list[Message], tools: tuple[dict[str, Any], ...]) -> list[int]:
        self._check_open()
        allow = self.settings.allow_control_tokens
        return render_prompt_ids(
            self.tokenizer, messages, allow_control_tokens=allow, **tool_kwargs(tools)
        )

    def _render(self, messages: list[Message], tools: tuple[dict[str, Any], ...]) -> str:
        self._check_open()
        allow = self.settings.allow_control_tokens
        return render_prompt(
            self.tokenizer, messages, allow_control_tokens=allow, **tool_kwargs(tools)
        )

    def _generate(self, request: Request) -> Generation:
        final: Generation | None = None
        for item in self._stream(request):
            if not isinstance(item, str):
                final = item
        if final is None:  # pragma: no cover - _run always ends with the Generation
            raise GenerationError(f"{self.runtime} ended without a result", backend=self.name)
        return final

    def _stream(self, request: Request) -> Iterator[str | Generation]:
        # The prompt, the context check and the compile run now, not at the first next().
        prompt_ids = self._checked_prompt(request)
        compiled = self._compile(request)
        return self._run(prompt_ids, request, compiled)

    async def _astream(self, request: Request) -> AsyncIterator[str | Generation]:
        """The sync stream on one dedicated thread, its items handed over through a queue.

        Some runtimes keep per-thread state for a generation (MLX's stream contexts must be
        entered and left on one thread), so a generation never hops between worker threads.
        Closing the async stream stops the generation after the current token.
        """
        iterator = await asyncio.to_thread(self._stream, request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        done = object()

        def hand_over(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def produce() -> None:
            try:
                for item in iterator:
                    hand_over(item)
                    if stop.is_set():
                        break
            except BaseException as exc:  # re-raised on the consumer's side
                hand_over(_Failure(exc))
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
                hand_over(done)

        worker = threading.Thread(target=produce, name=f"qwen-{self.name}-astream", daemon=True)
        worker.start()
        try:
            while True:
                item = await queue.get()
                if item is done:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            stop.set()
            await asyncio.to_thread(worker.join)

    def close(self) -> None:
        """Release the model (waits for a generation running on another thread). Safe to call
        twice. A stream still open on *this* thread keeps its own references and finishes."""
        if self._closed:
            return
        self._ahead.stop()
        same_thread = self._guard.held_here
        with self._guard.closing():
            super().close()
            self._english_blocked_mask = None
            self._release(same_thread=same_thread)

    # -- the loop -------------------------------------------------------------------------------

    def _run(
        self, prompt_ids: list[int], request: Request, compiled: Any
    ) -> Iterator[str | Generation]:
        """Generate; yield visible pieces, then the final :class:`Generation`."""
        with self._guard.generation():
            self._check_open()
            arrivals = self._guard.arrivals  # a call arriving after this one is waited for
            start = time.perf_counter()
            self._cached_tokens = 0  # a runtime with a prompt cache sets it in _tokens
            tokenizer = self.tokenizer  # close() on this thread drops the attribute
            answer = AnswerAssembler(
                tokenizer,
                self._end_ids(request, compiled),
                request.sampling,
                tools=bool(request.tools),
            )
            tokens = self._tokens(prompt_ids, request, compiled)
            try:
                for token in tokens:
                    visible = answer.feed(token)
                    if visible:
                        yield visible
                    if answer.done:
                        break
            except GenerationError as exc:
                exc.partial_text = exc.partial_text or answer.text
                raise
            except QwenBackendsError:
                raise
            except Exception as exc:
                raise GenerationError(
                    f"{self.runtime} generation failed: {first_line(exc)}",
                    partial_text=answer.text,
                    backend=self.name,
                ) from exc
            finally:
                close = getattr(tokens, "close", None)
                if close is not None:
                    close()
            tail = answer.finish()
            if tail:
                yield tail
            seconds = time.perf_counter() - start
            generation = answer.generation(len(prompt_ids), seconds, self._cached_tokens)
            yield generation
            if self._prepares_next_turn():
                held = [*prompt_ids, *answer.ids]
                self._ahead.submit(
                    lambda: self._prepare_next_turn(request, generation, held), arrivals
                )

    def _prepare_next_turn(self, request: Request, generation: Generation, held: list[int]) -> None:
        """Compute the conversation as its next turn will begin into the prompt cache (on the
        :class:`~qwen_backends.backends.next_turn.AheadWorker`, the lock held)."""
        ids = next_turn_ids(
            self.tokenizer,
            request,
            generation,
            held,
            allow_control_tokens=self.settings.allow_control_tokens,
        )
        if ids is not None:
            self._extend_cache(ids)

    def wait_idle(self) -> None:
        """Return once the work done ahead after the last answer (its next turn's history
        computed into the prompt cache) has run or given way."""
        self._ahead.wait()

    def _checked_prompt(self, request: Request) -> list[int]:
        """Render the non-thinking prompt and check it fits with ``max_new_tokens``."""
        prompt_ids = self._prompt_ids(request.messages, request.tools)
        check_context(
            len(prompt_ids),
            request.sampling.max_new_tokens,
            self.context_window,
            backend=self.name,
            hint=self.context_hint,
        )
        return prompt_ids

    def english_blocked(self) -> np.ndarray:
        """``english_only`` as one boolean mask over :attr:`vocab_rows` (``True`` = never sample),
        built once per instance; each runtime adapts it to its logits (torch, numpy, MLX)."""
        if self._english_blocked_mask is None:
            import numpy as np

            from qwen_backends.vocab import allowed_token_ids

            allowed = np.asarray(allowed_token_ids(self.tokenizer, tier="english"), dtype=np.int64)
            blocked = np.ones(self.vocab_rows, dtype=bool)
            blocked[allowed[allowed < self.vocab_rows]] = False
            self._english_blocked_mask = blocked
        return self._english_blocked_mask

    def english_bias(self) -> np.ndarray:
        """:meth:`english_blocked` as an additive float32 vector: 0 allowed, ``-inf`` blocked."""
        import numpy as np

        return np.where(self.english_blocked(), np.float32(-np.inf), np.float32(0.0)).astype(
            np.float32
        )

    def _check_open(self) -> None:
        check_open(self._closed, self.name)


class GenerationLock:
    """Serialises the generations of one backend instance.

    Parameters
    ----------
    backend
        The backend's name, for the error message.
    """

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self._owner: int | None = None
        # Calls that asked for the lock so far: work done ahead (see ahead()) gives way to them.
        self._arrivals = 0
        self._arrived = threading.Condition()

    @property
    def busy(self) -> bool:
        """Whether some thread is generating right now."""
        return self._lock.locked()

    @property
    def held_here(self) -> bool:
        """Whether the calling thread holds the lock (an open stream of its own)."""
        return self._owner == threading.get_ident()

    @contextlib.contextmanager
    def generation(self) -> Iterator[None]:
        """Hold the lock for one generation (other threads wait).

        Raises
        ------
        GenerationError
            When this thread already holds it (a stream it has not finished or closed).
        """
        if self.held_here:
            raise GenerationError(
                "a generation is already running on this thread (an unfinished stream?); "
                "finish or close() that stream first",
                backend=self.backend,
            )
        self.interrupt()  # an arrival: waiting work ahead gives way
        with self._lock:
            self._owner = threading.get_ident()
            try:
                yield
            finally:
                self._owner = None

    @property
    def arrivals(self) -> int:
        """How many generations have asked for the lock so far."""
        return self._arrivals

    @contextlib.contextmanager
    def ahead(self, seen: int, wait_s: float) -> Iterator[bool]:
        """Hold the lock for work done ahead of time (yields ``True``), but only once no
        generation has asked for it for ``wait_s`` seconds after ``seen`` arrivals and it is
        free; otherwise yield ``False`` at once. A caller never waits behind work that has not
        started; it waits for one that has, as behind any generation."""
        with self._arrived:
            arrived = self._arrived.wait_for(lambda: self._arrivals != seen, wait_s)
            taken = not arrived and self._lock.acquire(blocking=False)
        if not taken:
            yield False
            return
        self._owner = threading.get_ident()
        try:
            yield True
        finally:
            self._owner = None
            self._lock.release()

    def interrupt(self) -> None:
        """Count an arrival (each generation, and ``close()``): waiting work ahead gives up."""
        with self._arrived:
            self._arrivals += 1
            self._arrived.notify_all()

    @contextlib.contextmanager
    def closing(self) -> Iterator[None]:
        """For ``close()``: wait for other threads' generations; a stream still open on this
        thread keeps its own references and finishes normally."""
        with contextlib.nullcontext() if self.held_here else self._lock:
            yield


def qwen_end_ids(tokenizer: PreTrainedTokenizerBase, model: str) -> tuple[int, int]:
    """``(<|im_end|>, <|endoftext|>)`` ids of ``tokenizer``.

    Raises
    ------
    ModelNotFoundError
        When the tokenizer lacks either token (it is not Qwen3's).
    """
    ids = []
    for token in END_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id:
            raise ModelNotFoundError(
                f"the tokenizer of {model!r} has no {token} token, so it is not a Qwen3 "
                "tokenizer; load Qwen3-4B (or a fine-tune of it)"
            )
        ids.append(token_id)
    return ids[0], ids[1]


def check_context(
    prompt_tokens: int, max_new_tokens: int, window: int, *, backend: str, hint: str
) -> None:
    """Refuse a call whose prompt plus ``max_new_tokens`` exceed ``window`` tokens.

    Parameters
    ----------
    hint
        How this backend's window can grow (appended to the advice), e.g. the setting to raise.

    Raises
    ------
    ContextLengthError
        Naming both numbers and what to change.
    """
    total = prompt_tokens + max_new_tokens
    if total > window:
        raise ContextLengthError(
            f"the prompt has {prompt_tokens:,} tokens and max_new_tokens is "
            f"{max_new_tokens:,}: {total:,} exceeds the context window of {window:,} tokens; "
            f"shorten the prompt or lower max_new_tokens{hint}",
            backend=backend,
        )


def tool_kwargs(tools: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    """``{"tools": [...]}`` for the chat template when there are tools, else nothing."""
    return {"tools": list(tools)} if tools else {}


class _Failure:
    """An exception raised on the producing thread, carried to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
