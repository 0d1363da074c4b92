"""Where records land: the Parquet sink with its atomic commits (``parquet``), schema inference
(``schema``) and the dead-letter files (``deadletter``). It may import :mod:`asyncingest.core`,
:mod:`asyncingest.limits` and :mod:`asyncingest.config`; it knows nothing of HTTP or the engine.
Private: everything below the public API in :mod:`asyncingest` may change.
"""
