"""Shared test setup: no hub access, wandb offline, and a small model cache per session."""
from __future__ import annotations

import os

# Set before anything imports transformers, datasets or wandb: hub look-ups must fail fast here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
