"""promptmux tasks: create soft prompts for tasks and register them."""
