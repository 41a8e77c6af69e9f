"""The engine: pure torch and transformers. One frozen base model, mixed-task batches,
continuous batching, the prompt cache, and the client and input processor the runtime goes
through. It imports the core, the methods, the registry's records and the models; never Ray,
FastAPI or Prometheus.
"""
