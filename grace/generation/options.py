"""How rationales are computed (shared prefix, continuous batching, compiled decoding), never what they are.

A plain dataclass without torch, so that the training schema (``grace.config``) can name it without loading
the engine.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GenerationOptions:
    """How rationales are computed, never what they are: none of these changes an embedding (beyond
    float rounding), so they are not embedding settings and never enter a saved config or cache key.

    All off is the plain batched loop of ``grace.generation.reference.generate``, kept as the reference.
    """

    shared_prefix: bool = True  # run the tokens every prompt starts with once per call
    continuous: bool = True  # refill a finished row's slot with the next waiting row
    compile: bool = False  # static KV cache + torch.compile'd decode step (CUDA graphs on GPUs)

    @property
    def plain(self) -> bool:
        return not (self.shared_prefix or self.continuous or self.compile)
