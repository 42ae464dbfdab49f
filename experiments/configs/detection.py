"""Detection distillation on digit canvases: teacher, scratch student, +Chen, +LD, +both.

``python -m experiments.run --config experiments/configs/detection.py``: 32 px
canvases, batch 16, 1500 steps, 3 seeds; training took 1496 s in all
(``setup.json`` ``train_seconds``, 15 runs; 29 min wall on 2 shared cores).
``compiled=False`` (a jitted call per step) because the measurement of
``python -m experiments.bench.dense`` (``results/detection/step_speed.json``,
quoted in the results) found ``lax.scan`` chunks many times slower for these
convolutional steps on XLA:CPU. ``:quick`` is a smoke run on
tiny models and a few steps.
"""

import ml_collections


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = 'detection'
  c.results = 'detection'          # experiments/results/<results>/
  c.workdir = 'runs/detection'     # checkpoints; complete runs are restored, not retrained
  c.fresh = False
  c.seeds = (0, 1, 2)
  c.data_dir = ''
  c.num_train = 2000               # digit canvases (the builder's default config)
  c.num_test = 500
  c.image_size = 32                # canvas side in pixels (the builder's default is 48)
  c.progress = False
  c.compilation_cache = 'runs/jax_cache'  # persistent XLA cache ('' = off)
  c.batch_size = 16
  c.num_steps = 1500
  c.learning_rate = 2e-3
  c.compiled = False               # kdjax.train.fit: lax.scan chunks (True) or a call per step
  c.teacher = {}                   # kwargs of dense_detector_teacher
  c.student = {}                   # kwargs of dense_detector_student
  # Distillation weights (0 disables a term) and the bounded regression's margin.
  c.hint_weight = 1.0
  c.soft_weight = 1.0
  c.bounded_weight = 0.5
  c.margin = 0.0
  c.ld_weight = 1.0
  c.num_examples = 4               # test canvases in detection_examples.png

  if mode == 'quick':
    c.results = 'detection_quick'
    c.workdir = 'runs/detection_quick'
    c.seeds = (0,)
    c.compilation_cache = ''
    c.num_train = 32
    c.num_test = 16
    c.batch_size = 8
    c.num_steps = 4
    c.teacher = {'widths': (4, 8, 8), 'head_width': 8, 'head_depth': 1}
    c.student = {'widths': (4, 8, 8), 'head_width': 8, 'head_depth': 1}
    c.num_examples = 2
  elif mode != 'default':
    raise ValueError(f"Unknown detection mode {mode!r}; use 'default' or 'quick'.")
  return c
