"""Examples of user code: transforms for the CPU stage (``telemetry``, see
:mod:`asyncingest.transform`) and a custom paginator (``keyset``, see
:mod:`asyncingest.core.pagination`).

Each is referenced from a pipeline by ``package.module:function`` (a transform runs in a worker
process). They are user code shipped as samples: they import nothing of asyncingest at run time
(types only), and nothing in the runtime imports them (the import contract checks that); configs
name them by reference.
"""
