"""One fine-tuning pipeline for both engines: :func:`run_finetune`.

Steps, in order (``engine`` is the only thing that differs between Unsloth and PEFT):

1. check the engine can run here (GPU for Unsloth, optimizer for CPU), before any download;
2. ``engine.load()`` -- base model and tokenizer (Unsloth is imported first, as it must be);
3. read the conversations and encode every assistant turn with the inference prompt
   (:mod:`qwen_backends.finetune.data`: train/infer parity, labels on assistant tokens only);
4. ``engine.add_lora()``; measure the assistant-token loss on a few examples;
5. train with TRL's ``SFTTrainer`` (progress bars, checkpoints, resume);
6. measure the loss again; save the adapter (``lora/``), the merged 16-bit model
   (``merged/``), GGUF files (``gguf/``) and a non-thinking Ollama ``Modelfile`` beside the
   first GGUF;
7. check every GGUF in a real engine (:func:`qwen_backends.export.gguf.verify_gguf`, the
   llamacpp backend): its template renders the training prompts exactly, ``<|im_end|>`` ends
   answers, and the trained answers come back greedy (as many as the merged model gets right
   through the hf backend). A GGUF that fails raises :class:`~qwen_backends.errors.ExportError`;
8. with ``export.mlx``, once the training model is released: an MLX copy (``mlx/``), loaded
   with the mlx backend and checked against ``merged/`` through the hf backend (identical
   prompt ids, greedy answers to the first training questions).

:meth:`FinetuneResult.load_backend` then reloads the merged model with the hf backend through
:func:`qwen_backends.create_backend`, so the fine-tuned model answers through the same interface.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwen_backends._files import ensure_directory
from qwen_backends.errors import ConfigurationError, MissingDependencyError
from qwen_backends.finetune.config import FinetuneConfig
from qwen_backends.finetune.data import (
    IGNORE_INDEX,
    EncodedExample,
    PadCollator,
    assistant_turns,
    encode_conversations,
    load_conversations,
)
from qwen_backends.finetune.engines import Engine, create_engine
from qwen_backends.finetune.ollama import write_modelfile
from qwen_backends.memory import check_finetune_memory
from qwen_backends.thinking import TemplateMode, template_mode

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from qwen_backends.backends.base import ModelBackend
    from qwen_backends.chat import Message
    from qwen_backends.export.mlx import MLXCheck

__all__ = ["FinetuneResult", "answer_token_loss", "assistant_loss", "run_finetune"]

logger = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    """What a run produced and how it went.

    Attributes
    ----------
    output_dir
        Folder of every artefact.
    adapter_dir, merged_dir, modelfile
        ``lora/``, ``merged/`` and the ``Modelfile``, or ``None`` when not written.
    gguf_files
        GGUF files written (``export.gguf``), each checked in llama.cpp unless
        ``export.verify_gguf`` is off.
    examples, dropped
        Training examples (one per assistant turn), and turns dropped by truncation.
    steps
        Optimizer updates performed.
    loss_before, loss_after
        Mean assistant-token loss on the first ``training.loss_examples`` examples before
        and after training (``nan`` when measuring was switched off).
    train_seconds
        Wall-clock time of ``trainer.train()``.
    log_history
        The trainer's logged records (loss, learning rate, ... per logging step).
    ollama_name
        The model name suggested for ``ollama create``.
    mlx_dir
        The MLX copy (``export.mlx``), or ``None``.
    mlx_check
        How the MLX copy compared with the merged model (``export.mlx``), or ``None``.
    template_mode
        The base model's template mode (hybrid: the Modelfile pre-fills the empty think block;
        non-thinking: Instruct-2507, it does not).
    """

    output_dir: Path
    adapter_dir: Path | None
    merged_dir: Path | None
    modelfile: Path | None
    gguf_files: list[Path]
    examples: int
    dropped: int
    steps: int
    loss_before: float
    loss_after: float
    train_seconds: float
    log_history: list[dict[str, Any]] = field(default_factory=list)
    ollama_name: str = "qwen3-finetuned"
    mlx_dir: Path | None = None
    mlx_check: MLXCheck | None = None
    template_mode: TemplateMode = TemplateMode.HYBRID

    def load_backend(self, backend: str = "hf", **overrides: Any) -> ModelBackend:
        """The result behind a backend: ``"hf"`` loads ``merged/``, ``"llamacpp"`` the first GGUF.

        Raises
        ------
        ConfigurationError
            If the run did not write what that backend loads (``export.merge: false``, or no
            ``export.gguf``).
        """
        from qwen_backends.factory import create_backend

        if backend == "llamacpp":
            if not self.gguf_files:
                raise ConfigurationError(
                    "this run wrote no GGUF file; list quantizations in export.gguf (e.g. "
                    "[q8_0]) to reload the result with the llamacpp backend"
                )
            return create_backend(
                backend="llamacpp", model=str(self.gguf_files[0].resolve()), **overrides
            )
        if backend != "hf":
            raise ConfigurationError(
                f"load_backend loads the fine-tuned files with 'hf' (merged/) or 'llamacpp' "
                f"(GGUF), not {backend!r}"
            )
        if self.merged_dir is None:
            raise ConfigurationError(
                "this run saved no merged model (export.merge: false); set export.merge: true "
                "to reload the result with the hf backend"
            )
        return create_backend(backend="hf", model=str(self.merged_dir.resolve()), **overrides)

    def summary(self) -> str:
        """A few lines for people: losses, time, where things are and how to use them."""
        lines = [
            f"trained {self.steps} steps on {self.examples} examples in "
            f"{self.train_seconds:.1f} s; assistant-token loss {self.loss_before:.4f} -> "
            f"{self.loss_after:.4f}",
        ]
        if self.dropped:
            lines.append(f"dropped {self.dropped} turns cut off by max_seq_length")
        if self.adapter_dir:
            lines.append(f"LoRA adapter: {_shown(self.adapter_dir)}")
        if self.merged_dir:
            merged = _shown(self.merged_dir)
            lines.append(f"merged model: {merged}  (QWEN_BACKEND=hf QWEN_MODEL={merged})")
        lines += [
            f"GGUF: {_shown(path)}  (QWEN_BACKEND=llamacpp QWEN_MODEL={_shown(path)})"
            for path in self.gguf_files
        ]
        if self.mlx_dir:
            mlx = _shown(self.mlx_dir)
            checked = ""
            if self.mlx_check is not None and self.mlx_check.answers:
                checked = (
                    f"; answers {self.mlx_check.matched}/{len(self.mlx_check.answers)} checked "
                    "questions like the merged model"
                )
            lines.append(f"MLX: {mlx}  (QWEN_BACKEND=mlx QWEN_MODEL={mlx}){checked}")
        if self.modelfile:
            lines.append(
                f"Ollama: cd {_shown(self.modelfile.parent)} && "
                f"ollama create {self.ollama_name} -f {self.modelfile.name}"
            )
        return "\n".join(lines)


def run_finetune(
    config: FinetuneConfig, conversations: Sequence[Sequence[Message]] | None = None
) -> FinetuneResult:
    """Fine-tune, save and export as ``config`` says (see the module docs for the steps).

    Parameters
    ----------
    config
        The run's configuration (:func:`~qwen_backends.finetune.config.load_config`).
    conversations
        Conversations to train on instead of ``config.data`` (already ``role``/``content``).

    Raises
    ------
    BackendUnavailableError
        For the unsloth engine on a machine without a supported GPU.
    ConfigurationError
        For unusable data or options.
    MissingDependencyError
        When the engine's extra is not installed.
    """
    engine = create_engine(config)
    engine.check_training_options()
    check_finetune_memory(config)  # before gigabytes of weights load
    _check_resume(config)
    if config.export.mlx is not None:
        _check_mlx_installed()
    # A bad output path fails now, not after training.
    ensure_directory(
        config.output_dir, "the fine-tuning outputs", "export.output_dir (--output-dir)"
    )
    if conversations is None:  # before loading the model: bad data fails fast
        conversations = load_conversations(config.data)
    with _cpu_threads(config.training.cpu_threads):
        result = _run(config, engine, conversations)
    if config.export.mlx is not None and result.merged_dir is not None:
        _export_mlx(config, result, conversations)
    return result


def _check_mlx_installed() -> None:
    """Refuse ``export.mlx`` before training when mlx-lm is not installed."""
    from qwen_backends.registry import missing_modules

    missing = missing_modules("mlx")
    if missing:
        raise MissingDependencyError(
            f"export.mlx needs {', '.join(missing)}, which is not installed; pip install "
            "'qwen-backends[mlx]' (Apple silicon Mac, or Linux with glibc >= 2.35), or remove "
            "export.mlx"
        )


def _export_mlx(
    config: FinetuneConfig, result: FinetuneResult, conversations: Sequence[Sequence[Message]]
) -> None:
    """Write ``output_dir/mlx`` from the merged model and check it (step 7)."""
    import gc

    from qwen_backends.export.mlx import check_mlx_export, export_mlx

    options = config.export.mlx
    assert options is not None and result.merged_dir is not None
    gc.collect()  # the trainer's model cycle: free it before loading two more copies
    target = config.output_dir / "mlx"
    if target.exists():
        import shutil

        shutil.rmtree(target)
    result.mlx_dir = export_mlx(
        result.merged_dir, target, quant=options.quant, group_size=options.group_size
    )
    questions = [assistant_turns(chat)[-1][0] for chat in conversations[: options.check_examples]]
    if questions:
        result.mlx_check = check_mlx_export(
            result.mlx_dir,
            result.merged_dir,
            questions,
            min_agreement=options.min_agreement,
        )


def _run(
    config: FinetuneConfig, engine: Engine, conversations: Sequence[Sequence[Message]]
) -> FinetuneResult:
    model, tokenizer = engine.load()
    # Refuses a thinking-only base before any work; picks the Modelfile's think prefill.
    mode = template_mode(tokenizer)
    training = config.training
    encoded, dropped = encode_conversations(
        tokenizer,
        conversations,
        config.max_seq_length,
        progress=training.progress_bar,
        allow_control_tokens=config.data.allow_control_tokens,
    )
    if dropped:
        logger.warning(
            "dropped %d turns whose answer max_seq_length=%d cut off entirely",
            dropped,
            config.max_seq_length,
        )
    model = engine.add_lora(model)
    collator = PadCollator(_pad_id(tokenizer))
    probe = encoded[: training.loss_examples]
    loss_before = assistant_loss(model, probe, collator) if probe else math.nan

    trainer = _trainer(config, engine.trainer_flags(), model, tokenizer, encoded, collator)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=training.resume_from_checkpoint or None)
    train_seconds = time.perf_counter() - started
    loss_after = assistant_loss(model, probe, collator) if probe else math.nan

    output = config.output_dir
    output.mkdir(parents=True, exist_ok=True)
    adapter_dir = None
    if config.export.save_adapter:
        adapter_dir = output / "lora"
        model.save_pretrained(str(adapter_dir))
        tokenizer.save_pretrained(str(adapter_dir))
    # Merged first: the peft engine's merge is final, and a failed GGUF conversion then still
    # leaves the merged model on disk.
    merged_dir = (
        engine.save_merged(model, tokenizer, output / "merged") if config.export.merge else None
    )
    gguf_files = engine.export_gguf(model, tokenizer, output / "gguf") if config.export.gguf else []
    if gguf_files and config.export.verify_gguf:
        _verify_ggufs(config, gguf_files, merged_dir, conversations)
    modelfile = None
    if config.export.modelfile:
        if gguf_files:
            modelfile = write_modelfile(
                gguf_files[0].parent,
                f"./{gguf_files[0].name}",
                num_ctx=config.export.num_ctx,
                mode=mode,
            )
        elif merged_dir is not None:
            modelfile = write_modelfile(
                output, "./merged", num_ctx=config.export.num_ctx, mode=mode
            )
    return FinetuneResult(
        output_dir=output,
        adapter_dir=adapter_dir,
        merged_dir=merged_dir,
        modelfile=modelfile,
        gguf_files=gguf_files,
        examples=len(encoded),
        dropped=dropped,
        steps=int(trainer.state.global_step),
        loss_before=loss_before,
        loss_after=loss_after,
        train_seconds=train_seconds,
        log_history=list(trainer.state.log_history),
        ollama_name=config.export.ollama_name,
        template_mode=mode,
    )


def _verify_ggufs(
    config: FinetuneConfig,
    gguf_files: Sequence[Path],
    merged_dir: Path | None,
    conversations: Sequence[Sequence[Message]],
) -> None:
    """Check every GGUF in llama.cpp against the merged model (see the module docs, step 7)."""
    from qwen_backends.export.answers import Answer, ask, conversation_tools
    from qwen_backends.export.gguf import answer_budget, verify_gguf
    from qwen_backends.finetune.data import assistant_turns

    trained = [assistant_turns(chat)[-1] for chat in conversations][: config.export.verify_examples]
    threads = config.training.cpu_threads or 1
    reference = None
    if merged_dir is not None and trained:
        from qwen_backends.factory import create_backend

        with create_backend(backend="hf", model=str(merged_dir.resolve())) as backend:
            tokenizer: Any = getattr(backend, "tokenizer")  # noqa: B009 - the hf backend's
            reference = 0
            for history, answer in trained:
                # Asked and compared exactly as verify_gguf asks the GGUF.
                expected = Answer.trained(answer, tools=conversation_tools(history) is not None)
                got = ask(backend, history, answer_budget(tokenizer, answer))
                reference += got.matches(expected)
    for path, quant in zip(gguf_files, config.export.gguf, strict=False):
        report = verify_gguf(
            path,
            tokenizer_dir=merged_dir,
            trained=trained,
            reference_matched=reference,
            quant=quant if config.engine == "peft" else None,
            threads=threads,
        )
        logger.info(
            "%s checked in llama.cpp: %d prompts identical, %d/%d trained answers (merged: %s)",
            path.name,
            report.prompts_checked,
            report.matched,
            len(trained),
            reference,
        )


def assistant_loss(
    model: PreTrainedModel,
    examples: Sequence[EncodedExample],
    collator: PadCollator,
    batch_size: int = 8,
) -> float:
    """Mean cross-entropy per assistant token (the trained tokens) over ``examples``."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                rows = [example.as_row() for example in examples[start : start + batch_size]]
                batch = {key: value.to(device) for key, value in collator(rows).items()}
                tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
                total += float(answer_token_loss(model, batch, tokens)) * tokens
                count += tokens
    finally:
        model.train(was_training)
    return total / count if count else math.nan


def answer_token_loss(
    model: PreTrainedModel, batch: dict[str, Any], num_items: Any = None
) -> torch.Tensor:
    """Summed cross-entropy of the labelled (answer) tokens, divided by ``num_items``.

    Runs the decoder, then the LM head only at positions whose next-token label is not
    :data:`~qwen_backends.finetune.data.IGNORE_INDEX`. ``num_items`` defaults to the number of
    such tokens in ``batch`` (a mean); the trainer passes the count over all accumulated
    micro-batches so gradient accumulation averages correctly.
    """
    import torch

    wrapped: Any = model
    base = wrapped.get_base_model() if hasattr(wrapped, "get_base_model") else wrapped
    hidden = base.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False
    ).last_hidden_state[:, :-1]
    targets = batch["labels"][:, 1:].to(hidden.device)
    keep = targets != IGNORE_INDEX
    head: Any = base.get_output_embeddings()
    logits = head(hidden[keep]).float()
    total = torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
    denominator = keep.sum().clamp(min=1) if num_items is None else num_items
    return total / denominator


@contextlib.contextmanager
def _cpu_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch CPU threads (restored afterwards); ``None`` changes nothing."""
    if threads is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_resume(config: FinetuneConfig) -> None:
    """Refuse, before loading anything, to resume from a checkpoint that is not there."""
    resume = config.training.resume_from_checkpoint
    if resume is False:
        return
    if resume is True:
        folder = config.output_dir / "checkpoints"
        if not any(folder.glob("checkpoint-*")):
            raise ConfigurationError(
                f"cannot resume: {folder} holds no checkpoint-N folder yet; set "
                "training.resume_from_checkpoint: false (and training.save_steps to write some)"
            )
    elif not Path(resume).is_dir():
        raise ConfigurationError(
            f"cannot resume: checkpoint folder {resume} does not exist; point "
            "training.resume_from_checkpoint at an existing checkpoint-N folder"
        )


def _shown(path: Path) -> str:
    """``path`` as users should type it: relative paths get ``./`` so they never read as hub ids."""
    return str(path) if path.is_absolute() else f"./{path}"


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return int(pad)


def _trainer(
    config: FinetuneConfig,
    flags: dict[str, bool],
    model: PreTrainedModel,
    tokenizer: Any,
    encoded: Sequence[EncodedExample],
    collator: PadCollator,
) -> Any:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    training = config.training
    arguments = SFTConfig(
        output_dir=str(config.output_dir / "checkpoints"),
        per_device_train_batch_size=training.per_device_train_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        warmup_steps=training.warmup_steps,
        max_steps=training.max_steps,
        num_train_epochs=training.num_train_epochs,
        learning_rate=training.learning_rate,
        optim=training.optim,
        weight_decay=training.weight_decay,
        lr_scheduler_type=training.lr_scheduler_type,
        seed=training.seed,
        logging_steps=training.logging_steps,
        save_strategy="steps" if training.save_steps else "no",
        save_steps=training.save_steps or 500,
        save_total_limit=training.save_total_limit,
        disable_tqdm=not training.progress_bar,
        report_to="none",
        max_length=config.max_seq_length,
        # The examples are already tokenized, masked and truncated (data.py); TRL must not
        # re-render them with its own template.
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        bf16=flags["bf16"],
        fp16=flags["fp16"],
        gradient_checkpointing=flags["gradient_checkpointing"],
    )
    dataset = Dataset.from_list([example.as_row() for example in encoded])
    trainer_class = SFTTrainer if _fused_loss_available() else _plain_loss_trainer(SFTTrainer)
    return trainer_class(
        model=model,
        args=arguments,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=collator,
    )


def _fused_loss_available() -> bool:
    """Whether TRL's fused LM-head loss can run: Triton kernels on a CUDA or XPU device."""
    import importlib.util

    import torch

    xpu = getattr(torch, "xpu", None)
    on_gpu = torch.cuda.is_available() or bool(xpu is not None and xpu.is_available())
    return on_gpu and importlib.util.find_spec("triton") is not None


def _plain_loss_trainer(base: type) -> type:
    """``base`` computing the loss with :func:`answer_token_loss` instead of TRL's fused loss.

    TRL 1.x computes the SFT loss with a Triton kernel that exists only for GPUs. Off the GPU
    the loss is computed here the same way (cross-entropy on labelled positions only), which
    also skips the vocabulary projection of every prompt token: most of the work for short
    answers and Qwen3's 151,936-token vocabulary.
    """

    class AnswerTokenLossSFTTrainer(base):
        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            loss = answer_token_loss(model, inputs, num_items_in_batch)
            return (loss, {"loss": loss}) if return_outputs else loss

    return AnswerTokenLossSFTTrainer
