"""The FastAPI gateway: Segmind-compatible relight endpoints and the v2 request API."""
