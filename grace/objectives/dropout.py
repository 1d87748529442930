"""Dropout for the training forward of the embedding objectives: on the attention weights.

SimCSE's two views of a sentence are two forward passes with different dropout masks. BERT has dropout
on its hidden states and attention weights (0.1 each); Llama-family decoders in transformers have none on
the hidden states and ``attention_dropout = 0.0`` in their configs. We raise the attention modules'
own ``attention_dropout`` for the duration of the training forward, rather than hooking dropout onto
hidden states, because:

* it is the architecture's own code path: transformers passes ``dropout=self.attention_dropout`` to
  every attention backend (eager, SDPA, flash) when the module is in training mode, so it runs inside
  the fused kernels and needs no hook that torch.compile, FSDP or gradient checkpointing must respect;
* it is what LLM2Vec's SimCSE step does for Llama and Mistral decoders (``attention_dropout=0.3``,
  McGill-NLP/llm2vec train_configs/simcse), the nearest published recipe for this model family;
* dropout on the residual stream of every layer (a forward hook) would compound over 30 layers and
  change the representation far more than BERT's sub-layer dropout does.

Only the attention modules' attribute changes, never ``model.config``: a saved checkpoint keeps its
original ``attention_dropout`` and embeds deterministically (evaluation runs in eval mode anyway).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Modules with a numeric ``attention_dropout`` attribute (transformers' attention layers)."""
    return [
        module
        for module in model.modules()
        if isinstance(getattr(module, "attention_dropout", None), (int, float)) and not isinstance(module.attention_dropout, bool)
    ]


@contextmanager
def attention_dropout(model: torch.nn.Module, probability: float) -> Iterator[None]:
    """Set every attention module's dropout to ``probability`` inside the block (it acts in train mode only).

    Raises ValueError when ``probability > 0`` and the model has no such modules (an architecture whose
    attention takes no dropout setting).
    """
    if probability == 0:
        yield
        return
    modules = attention_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no attention module with an attention_dropout setting, so dropout views cannot be made")
    saved = [module.attention_dropout for module in modules]
    for module in modules:
        module.attention_dropout = probability
    try:
        yield
    finally:
        for module, value in zip(modules, saved):
            module.attention_dropout = value
