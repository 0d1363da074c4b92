"""The CPU stage: the process pool that runs user transform functions (``pool``) and the
ordered pipe the engine's writer feeds (``pipe``), which takes the parsed ``TransformConfig``
as its one spec. It may import :mod:`asyncingest.core` and :mod:`asyncingest.config`; it knows
nothing of HTTP, the sink or the engine. Private: everything below the public API in
:mod:`asyncingest` may change.
"""
