"""PEFT's prompt-learning methods, one module each, as PEFT's own tuners keep them: what each
stores, how it is checked, what it serves as (a soft prompt or a pinned KV prefix), how it is
trained and imported. `catalog.py` is the one place a method is registered."""
