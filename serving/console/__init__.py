"""The console: the registry in the browser — tasks, versions, live experiments, tenants —
with the admin's actions; served alone by `promptmux ui` (no model loaded) and mounted at
`/ui` by `promptmux serve`. It reads only the registry, so every replica's traffic and
every controller's decisions show, whoever serves it."""

CONSOLE_PATH = "/ui"
