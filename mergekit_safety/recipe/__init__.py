"""The recipe machinery: a recipe read and checked (its layouts walked, its keys, the fail-fast
checks), what runs while mergekit plans and merges it (``top_k``, the report, one-line errors),
every weight scored through mergekit's planner, ``inspect``, and ``base+adapter`` inputs merged
once.

The face imports nothing: import the module you need (``mergekit_safety.recipe.walk.walk``).
"""
