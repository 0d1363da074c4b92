"""Scale-out: one job over N identical worker processes fed by RabbitMQ (docs/scale-out.md).

``shards`` cuts a job into deterministic shards and derives each shard's own config;
``commit`` keeps the commit records (manifests) and publishes a shard's files by rename;
``broker`` connects to RabbitMQ (aio-pika, the optional extra ``asyncingest[scale]``) and declares
the queues; ``submit``, ``worker`` and ``status`` are the three commands. This layer sits between
``operate`` and the engines: it may import the engine and every layer below it, never
:mod:`asyncingest.operate` or :mod:`asyncingest.cli`. Private: everything below the public API
in :mod:`asyncingest` may change.
"""
