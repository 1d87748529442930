"""Thin helpers around a causal LM's forward pass, shared by rollout, policy loss and embedding.

We call the decoder stack and the LM head separately so that hidden states come out of the same pass
that produces logits, and so logits are computed only where they are needed (the last position while
generating, the rationale positions in the loss) instead of over the whole [B, T, V] sequence.

Training forwards (which take gradient) go through ``LMForward``: one module whose ``forward`` runs the
decoder and the LM head, so that a data-parallel wrapper sees every call. DDP syncs gradients, and FSDP
gathers the parameters it sharded (the embedding and the LM head live in the root, outside the decoder
layers), only around a wrapped module's own ``forward``; calling the decoder of a wrapped model directly
would skip both. Rollouts call the decoder directly, and under FSDP do so with the parameters gathered
for the whole rollout (``grace.distributed.parallel``).
"""
from __future__ import annotations

import inspect
from functools import lru_cache

import torch
from transformers import PreTrainedModel


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] positions counting real tokens only, so left padding does not shift a sequence's positions."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


@lru_cache(maxsize=None)
def _cache_keyword(decoder_class: type) -> str:
    # transformers renamed `past_key_values` to `cache`; accept either so one floor covers both.
    parameters = inspect.signature(decoder_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def decoder_forward(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    cache=None,
    use_cache: bool = False,
):
    """Last-layer hidden states (after the final norm) [B, T, H] and the KV cache."""
    decoder = model.get_decoder()
    keyword = _cache_keyword(type(decoder))
    output = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=use_cache,
        **{keyword: cache},
    )
    return output.last_hidden_state, getattr(output, keyword)


class LMForward(torch.nn.Module):
    """A causal LM's decoder and its LM head at chosen positions, as one ``forward``: what DDP wraps and
    FSDP shards (``grace.distributed.parallel``). Its parameters are the model's, under the prefix ``lm.``."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.lm = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor,
        logits_start: int = 0,
        logits_width: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Last-layer hidden states [B, T, H] and the logits [B, logits_width, V] of the states at positions
        ``logits_start .. logits_start + logits_width - 1`` (None when ``logits_width`` is None)."""
        hidden, _ = decoder_forward(self.lm, input_ids, attention_mask, positions)
        if logits_width is None:
            return hidden, None
        return hidden, lm_logits(self.lm, hidden[:, logits_start : logits_start + logits_width])


def hidden_and_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    logits_start: int = 0,
    logits_width: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``LMForward``'s output for a causal LM, or for a module whose forward is ``LMForward``'s (wrapped in
    DDP or sharded by FSDP, or ``grace.distributed.lora.WithoutAdapter``), called through that module's forward."""
    module = LMForward(model) if isinstance(model, PreTrainedModel) else model
    return module(input_ids, attention_mask, positions, logits_start, logits_width)


def lm_logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Logits [..., V] for hidden states [..., H]."""
    return model.get_output_embeddings()(hidden)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
