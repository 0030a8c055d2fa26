"""Models: their specs (`list_models`, the recipes) and the registry (`create_model`), the networks, the
baseline's CPU fast path and its C kernel, model files and which one a command means."""
