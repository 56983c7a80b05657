"""``mergekit-safety search``: merge coefficients — global, or per layer and module type —
chosen under the safety gate by Optuna, each trial merged in memory by mergekit into a model
loaded once; the answer a plain mergekit recipe. Optuna (and Ray) are imported only when a
search runs."""
