"""The configuration layer: the typed, frozen pydantic models of a pipeline (``models``), reading
them from YAML/JSON with ``--set`` overrides (``loading``), the input-id files a config names
(``sources``), the references to user functions (``callables``) and a config's identity for resume
(``identity``). Config is parsed once, here, at the edge. The bottom layer: it imports nothing of
asyncingest but :mod:`asyncingest.errors`, and no runtime library (no aiohttp, requests, rich).
Private: everything below the public API in :mod:`asyncingest` may change.
"""
