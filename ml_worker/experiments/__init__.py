"""Experiments: how we measure the platform, apart from what it runs.

Nothing in a learning round or the platform imports these modules; each registers commands of
``python -m ml_worker`` (see :data:`ml_worker.cli.COMMAND_MODULES`).

- :mod:`.simulate_al`, :mod:`.simulate_al_cli`: ``al-simulate``, label efficiency of the selection strategies.
- :mod:`.compare`: ``peft-compare``, PEFT methods x labelled cases from one base (its hash split,
  :func:`~ml_worker.adaptation.splits.partition`, is also the held-out split of ``train --test-fraction``).
- :mod:`.bench_round`: ``bench-round``, the parts of one adaptation round timed.
- :mod:`.bench`, :mod:`.bench_encoder`: ``bench-presegment`` and friends, ``bench-encoder``.
"""
