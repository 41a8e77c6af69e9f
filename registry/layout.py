"""File names of a version directory (a PEFT adapter plus promptmux's manifest) and of an export.

Kept apart from `artifact` (torch, safetensors, peft) so that reading the registry's
metadata, as `promptmux registry list` does, loads none of them.
"""

TENSOR_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
MANIFEST_FILE = "promptmux.json"
# Only in an export: the task the version belongs to and where it came from (`ExportedTask`).
EXPORT_FILE = "promptmux-task.json"
