"""The small core under every room: errors, the strict base model, time, the request fields,
token usage, defaults and limits, and the JSONL reader. It imports nothing of promptmux's
other rooms, and no torch."""
