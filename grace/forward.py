"""Thin helpers around a causal LM's forward pass, shared by rollout, policy loss and embedding.

We call the decoder stack and the LM head separately so that hidden states come out of the same pass
that produces logits, and so logits are computed only where they are needed (the last position while
generating, the rationale positions in the loss) instead of over the whole [B, T, V] sequence.
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


def lm_logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Logits [..., V] for hidden states [..., H]."""
    return model.get_output_embeddings()(hidden)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
