"""What the people running a crawl see and use: the live display (``progress``,
``progress_model``), logs (``logsub``), Prometheus metrics (``metrics``), the end-of-run
reporter (``reporter``), wiring them to a run with signal handling (``run``), the report
``validate`` prints (``validate_report``), ``plan --sample`` and its estimate (``sample``,
``estimate``) and process tuning (``tuning``). Everything here subscribes to the engines'
events or samples their state; it may import the engines and every layer below them, never
:mod:`asyncingest.cli`. Private: everything below the public API in :mod:`asyncingest` may
change.
"""
