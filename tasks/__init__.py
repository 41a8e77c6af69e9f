"""Jobs on prompts: train (on one worker or several), search over methods and settings,
evaluate, register, and the demo."""
