"""The serving runtime of one replica: routing, request preparation, live registry refresh,
metrics, settings, and the offline JSONL runner. Above the engine, below HTTP; no Ray, no FastAPI.
"""
