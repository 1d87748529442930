"""Several processes, one run: which rank this is and what ranks exchange (``ranks``), DDP or FSDP2
around the model (``parallel``), and LoRA adapters through peft (``lora``).
"""
