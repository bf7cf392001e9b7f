"""The classifier worker: RabbitMQ consumer -> micro-batch -> onnxruntime -> reply + Redis cache.

Run it with ``python -m classifier``. One module per concern:

- :mod:`classifier.config`     settings from the environment, a few CLI overrides
- :mod:`classifier.preprocess` image bytes -> uint8 H x W x 3 RGB per the model's resize policy
- :mod:`classifier.model`      the onnxruntime session and the model file's metadata
- :mod:`classifier.batcher`    the micro-batch collector (pure asyncio)
- :mod:`classifier.cache`      Redis result cache and model announcement, tolerant of Redis loss
- :mod:`classifier.metrics`    Prometheus metrics on their own small HTTP port
- :mod:`classifier.consumer`   RabbitMQ: connect, consume (again after a cancel), publish, settle, close
- :mod:`classifier.pipeline`   the jobs: accept (poison, headers, expiry), batch, infer, reply, cache, settle
- :mod:`classifier.worker`     wires the consumer to the pipeline; start-up and drain order
"""
