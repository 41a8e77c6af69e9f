"""The small core under every room: errors, the strict base model, time, the request fields
and the defaults. It imports nothing of promptmux, and no torch."""
