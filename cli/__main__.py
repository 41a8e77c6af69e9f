"""`python -m promptmux.cli`: the `promptmux` command without its script on PATH."""

from promptmux.cli import main

main()
