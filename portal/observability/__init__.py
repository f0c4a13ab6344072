"""What operators see of the running portal: structured logs, Prometheus metrics, probes.

- ``logging``: a per-request/per-task log context (request id, organisation, user, task, instance)
  added to every log line, and the JSON and plain formatters ``settings.LOGGING`` uses;
- ``middleware``: the request id (``X-Request-ID``), HTTP metrics and the access log;
- ``metrics``: the Prometheus metrics and the ``/metrics`` endpoint;
- ``celery_signals``: task context, request-id propagation and task metrics for Celery;
- ``health``: ``/healthz`` (liveness) and ``/readyz`` (readiness);
- ``gunicorn``: gunicorn hooks for Prometheus' multiprocess mode.
"""
