"""The async HTTP client (``client``): aiohttp sessions, credentials (``credentials``) and how they
are kept out of URLs and logs, OAuth access tokens (``oauth``), redirects checked hop by hop and
each hop sent through the limits. The only layer below the engine that imports aiohttp. It may
import :mod:`asyncingest.limits`, :mod:`asyncingest.core` and :mod:`asyncingest.config`.
Private: everything below the public API in :mod:`asyncingest` may change.
"""
