"""Defaults and caps that more than one room reads."""

DEFAULT_BASE_MODEL = "tiny-random-llama"  # embedded, random weights: for tests and first steps
MIN_TEMPERATURE = 1e-2
MIN_REPETITION_PENALTY = 1e-2
# Token counts are capped only against absurd values in schemas; the limit that applies is the
# engine's configured `max_new_tokens` (one limit, one message, whatever the endpoint).
TOKENS_CAP = 1_048_576
