"""The HTTP shell: the FastAPI app, its schemas and guard, the Ray Serve deployment, the
local cluster of `promptmux serve`, and the JSON errors of Ray's proxy.
"""
