"""An aiohttp service that runs pipelines on request (``app.py``; README.md beside it)."""
