"""The application shell: the ``segserve`` command line and ``segserve up``.

The only code that may import every package (service, workers, models, evaluation and the foundation);
nothing imports it.

    cli.py       ``segserve`` commands: serve, worker, up, keys, models, evaluate
    up.py        ``segserve up``: API, worker(s) and an embedded broker on one machine
    evaluate.py  ``segserve evaluate``: batch evaluation of folders or a dataset through the API
"""
