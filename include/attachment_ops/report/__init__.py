"""Benchmark report: API latency, database footprint and maintenance-chain figures, with history.

Modules, in the order a report is made:

- ``endpoints``: measure the configured HTTP endpoints (closed loop, one persistent connection).
- ``database``: attachments table sizes, bytes still inline, database size, read-only probes.
- ``chain``: figures handed over by the maintenance chain.
- ``history``: report stores (bucket and local directory), baseline comparison, trend.
- ``markdown``, ``html_page``, ``charts``: renderings of the JSON document.
- ``build``: ``produce_report`` ties the steps together; ``airflow_task`` adds the Airflow glue.
"""
