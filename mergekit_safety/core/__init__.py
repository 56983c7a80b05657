"""What every layer shares: the error type, the alignment subspace and its score ρ, selection by
rank, the inputs' roles, the methods' parameters, calibration statistics on disk, the acceptance
rule and its sampling noise, the run in progress, the output directory and the card writer.

The face imports nothing: import the module you need (``mergekit_safety.core.subspace``).
"""
