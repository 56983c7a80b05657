"""Choosing a recipe's parameters under a safety gate: ``sweep`` (a grid) and ``search``
(Optuna), one engine.

A safety merge trades task skill for refusals, and the best ``weight`` (λ) and ``threshold`` (τ,
or ``top_k``/``fraction``) are model-specific. A sweep is a search whose sampler is the grid: one
loop (:func:`.engine.tune`) asks a sampler for points, has a runner merge and evaluate each, records
every outcome (a failed point with its error) and chooses the best passing point.

- :mod:`.engine`: the loop, the jobs and their outcomes;
- :mod:`.runners`: where points run (here, or on Ray: :mod:`.ray_cluster`) and how a point is
  merged: to disk by mergekit's ``run_merge`` (:mod:`.merging`), or in memory into a model loaded
  once (:mod:`.resident`);
- :mod:`.choice`: the choice rule (picking the winning point is "choose"; "selection" is the
  ``top_k`` choice of matrices inside a method);
- :mod:`.grid` and :mod:`.sweep`: the ``--set`` grid, its sampler and ``sweep``'s result;
  :mod:`.sweep_report`: ``sweep.json``/``.csv``/``.md`` and the plots;
- :mod:`.space`, :mod:`.study` and :mod:`.search`: the search space, the Optuna study, its sampler
  and ``search``'s result; :mod:`.search_report`: ``search.json``/``.md`` and the plots.

Optuna and Ray are imported only when a search or a ``--ray`` run starts.
"""
