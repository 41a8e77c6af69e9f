"""The file names of a PEFT adapter folder, as PEFT writes and reads them.

Kept apart from the tensor code (torch, safetensors, peft) so that reading the registry's
metadata, as `promptmux registry list` does, loads none of them.
"""

TENSOR_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
