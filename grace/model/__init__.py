"""The model side below generation: where weights come from (``sources``, ``gguf``, ``loading``), how a text
becomes a prompt with token spans (``system_prompt``, ``prompts``), the decoder forward (``forward``) and
which hidden states make an embedding (``pooling``).
"""
