"""The system prompt of the official GRACE code, verbatim (arXiv 2510.04506): the default of every embedding.

A module of its own, free of torch, so that the training schema (``grace.config``) can use it as a default
without loading model code.
"""

GRACE_SYSTEM_PROMPT = (
    "Read and analyze the following text, then you need to provide your reasoning within <think></think> "
    "tags. Finally, generate a comprehensive understanding of this text."
)
