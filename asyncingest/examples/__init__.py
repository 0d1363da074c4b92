"""Example transforms for the CPU stage (see :mod:`asyncingest.transform`).

Each is referenced from a pipeline by ``package.module:function`` and runs in a worker process.
"""
