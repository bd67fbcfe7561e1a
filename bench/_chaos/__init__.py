"""Helpers of the chaos suite (``bench/chaos.py``, ``tests/e2e/test_chaos*.py``).

* :mod:`_chaos.billing`: the devserver on a fixed port with a database file, so it can be
  stopped and started again with its ledger intact;
* :mod:`_chaos.apps`: the three example apps served by real servers (FastAPI under uvicorn,
  Django under uvicorn or gunicorn, Flask under gunicorn ``--preload`` with 2 workers), each
  with its request mix and what each response bills;
* :mod:`_chaos.load`: the load generator, which keeps its own record of every billable
  response (customer, meter, quantity) and of every latency;
* :mod:`_chaos.ledger`: the devserver's ledger and the failure logs against that record;
* :mod:`_chaos.procs`: process trees, their RSS, signals;
* :mod:`_chaos.scenarios`: the scenarios and the result table.

``bench/`` is put on ``sys.path`` by the callers; these modules import ``fluxrate_web`` only for
the devserver harness and the failure-log reader.
"""
