"""Flows: orchestration over the declared stages, from a recipe to a verified bundle and across a search grid.

* :mod:`.recipe` — a run as one versioned TOML file; each table's keys are a stage's settings.
* :mod:`.pipeline` — ``supertiny run``: the recipe's stage invocations, wired one to the next.
* :mod:`.runner` — the one cached runner both use: a stage invocation keyed (settings and input
  content), run in this process or as its ``supertiny`` command in a child, recorded, skipped when done.
* :mod:`.bundle` — the deployment bundle and its budget check.
* :mod:`.search`, :mod:`.search_grid`, :mod:`.search_report` — ``supertiny search``.

A flow may import the stages (through :mod:`supertiny.stages.registry`), the runtime and everything below;
only the CLI imports a flow.
"""
