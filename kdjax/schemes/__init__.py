"""Multi-stage distillation schemes: compositions of runs, steps and checkpoints.

No trainer classes: each scheme is a function that calls
:func:`kdjax.runs.train_and_evaluate` (or a step builder) in sequence, passing
checkpoint directories from one run to the next.
"""

# [chains: names here]
# [netaug/wd: names here]
