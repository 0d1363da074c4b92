"""What a run remembers: the checkpoint and child-job journals (``checkpoint``), range sets
(``rangeset``), resume and the run report (``resume``), the output-folder lock (``lock``),
compaction of committed files (``compact``), the current table of ``merge: latest``
(``current``) and each endpoint's books (``ledger``, shared by the
async and the thread-pool engine). It may import :mod:`asyncingest.sink` and the layers below it;
never an engine. Private: everything below the public API in :mod:`asyncingest` may change.
"""
