"""The CPU stage: the process pool that runs user transform functions (``pool``), the ordered
pipe the engine's writer feeds (``pipe``) and the standalone stage (``stage``). It may import
:mod:`asyncingest.core` and :mod:`asyncingest.config`; it knows nothing of HTTP, the sink or the
engine. Private: everything below the public API in :mod:`asyncingest` may change.
"""
