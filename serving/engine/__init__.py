"""The engine: pure torch and transformers. One frozen base model, mixed-task batches,
continuous batching, the prompt cache. It imports only `promptmux.registry`, torch and
transformers; never Ray, FastAPI or Prometheus.
"""
