"""Models: the registry (`create_model`, `list_models`), the networks, the baseline's CPU fast path and
its C kernel, model files."""
