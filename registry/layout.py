"""promptmux's own files beside a version's PEFT adapter: its manifest, and in an export the task."""

MANIFEST_FILE = "promptmux.json"
# Only in an export: the task the version belongs to and where it came from (`ExportedTask`).
EXPORT_FILE = "promptmux-task.json"
