"""Rationales and the embeddings pooled while writing them.

* ``options``: how rationales are computed (shared prefix, continuous batching, compile): never what they are;
* ``sampling``: the next token, per-row temperature, top-p and seed;
* ``reference``: the plain batched loop every optimised path is tested against (``generate``);
* ``engine`` (with ``prefix``, ``kv_slots``, ``compiled``): the same results through decoding slots;
* ``rollout``: k rationales per text and role, gathered into one ``RolloutBatch``.
"""
