"""Performance harness: the benchmark (``python -m perf.bench``), its typed results and report, load tests.

Never imported by the services; the test suite imports only :mod:`perf.results` and :mod:`perf.report`
(no measuring). locust is imported by ``perf/locustfile.py`` only, in a locust process of its own.
"""
