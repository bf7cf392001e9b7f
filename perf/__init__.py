"""Performance harness: load tests (locust), the benchmark (``python -m perf.bench``) and its report.

Nothing here is imported by the services or the test suite; locust is imported
by ``perf/locustfile.py`` only, which runs in a locust process of its own.
"""
