"""HTTP routes: the FastAPI app, its request bodies and guard, the native, OpenAI and
introspection routers, and how errors read. Ray hosting lives in `serving/hosting/`."""
