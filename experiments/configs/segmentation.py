"""Structured KD for segmentation on digit canvases: scratch, +pixel, +pair, +holistic.

``python -m experiments.run --config experiments/configs/segmentation.py``:
32 px canvases, batch 16, 900 steps, 3 seeds; training took 1398 s in all
(``setup.json`` ``train_seconds``, 15 runs; 25 min wall on 2 shared cores).
``compiled=False`` (a jitted call per step): the measurement of
``python -m experiments.bench.dense`` (``results/segmentation/step_speed.json``,
quoted in the results) found ``lax.scan`` chunks many times slower for these
convolutional steps on XLA:CPU. 900 steps is what fitted the time
budget: the students are still far from the teacher. ``:quick`` is a smoke
run on tiny models and a few steps.
"""

import ml_collections


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = 'segmentation'
  c.results = 'segmentation'        # experiments/results/<results>/
  c.workdir = 'runs/segmentation'   # checkpoints; complete runs are restored, not retrained
  c.fresh = False
  c.seeds = (0, 1, 2)
  c.data_dir = ''
  c.num_train = 2000
  c.num_test = 500
  c.image_size = 32                # canvas side in pixels (the builder's default is 48)
  c.progress = False
  c.compilation_cache = 'runs/jax_cache'  # persistent XLA cache ('' = off)
  c.batch_size = 16
  c.num_steps = 900
  c.learning_rate = 2e-3
  c.compiled = False               # kdjax.train.fit: lax.scan chunks (True) or a call per step
  c.teacher = {}                    # kwargs of unet_teacher
  c.student = {}                    # kwargs of unet_student
  # Distillation weights (0 disables a term); Liu et al. 2019 use 10, 1 and 0.1
  # for the pixel-wise, pair-wise and holistic terms.
  c.pixel_weight = 10.0
  c.pair_weight = 1.0
  c.holistic_weight = 0.1
  c.critic_widths = (16, 32)
  c.critic_learning_rate = 1e-4
  c.gp_weight = 10.0
  c.num_examples = 4                # test canvases in segmentation_examples.png

  if mode == 'quick':
    c.results = 'segmentation_quick'
    c.workdir = 'runs/segmentation_quick'
    c.seeds = (0,)
    c.compilation_cache = ''
    c.num_train = 32
    c.num_test = 16
    c.batch_size = 8
    c.num_steps = 4
    c.teacher = {'widths': (4, 8)}
    c.student = {'widths': (4, 8)}
    c.critic_widths = (4,)
    c.num_examples = 2
  elif mode != 'default':
    raise ValueError(f"Unknown segmentation mode {mode!r}; use 'default' or 'quick'.")
  return c
