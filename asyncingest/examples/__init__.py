"""Example transforms for the CPU stage (see :mod:`asyncingest.transform`).

Each is referenced from a pipeline by ``package.module:function`` and runs in a worker process.
They are user code shipped as samples: they import nothing of asyncingest, and nothing in the
runtime imports them (the import contract checks that); configs name them by reference.
"""
