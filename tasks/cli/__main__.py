"""`python -m promptmux.tasks.cli`: the `promptmux` command without its script on PATH."""

from promptmux.tasks.cli import main

main()
