"""The serving runtime of one replica: routing, tenants and quotas, answering a request with
one call on the engine client, live registry refresh, metrics, settings, and the offline
runner. Above the engine client, below HTTP; no Ray, no FastAPI.
"""
