"""Several processes, one run: whether torchrun started this one and when the run began, known without
torch (``launch``), which rank this is and what ranks exchange (``ranks``), DDP or FSDP2
around the model (``parallel``), and LoRA adapters through peft (``lora``).
"""
