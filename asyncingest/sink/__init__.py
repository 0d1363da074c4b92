"""Where records land: the Parquet sink with its atomic commits (``parquet``), schema inference
(``schema``), the dead-letter files (``deadletter``) and the fsync helpers that make a rename
durable (``durable``, also used by the state files). It may import :mod:`asyncingest.core`,
:mod:`asyncingest.limits` and :mod:`asyncingest.config`; it knows nothing of HTTP or the engine.
Private: everything below the public API in :mod:`asyncingest` may change.
"""
