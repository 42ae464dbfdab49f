"""Transformer distillation (MobileBERT-style) on MNIST-1D as a sequence of 10 patch tokens.

Teacher: 4 pre-LN blocks of width 128, 4 heads; student: the same depth and
heads at width 32. Students: scratch, logit KD, logit KD + attention and
hidden transfer of all layers at once, and progressive transfer (one layer per
stage, lower layers frozen, then logit KD on all parameters) with the same
total number of updates. ``python -m experiments.run --config
experiments/configs/transformer.py``: 3 seeds, 2000 student updates each;
its training took 999 s (setup.json ``train_seconds``; about 17 minutes end to
end) on 2 CPU cores shared with other jobs. ``:quick`` is a
smoke run on tiny models and a few steps.
"""

import ml_collections


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = 'transformer'
  c.results = 'transformer'        # experiments/results/<results>/
  c.workdir = 'runs/transformer'   # teacher checkpoints and finished student records
  c.fresh = False
  c.seeds = (0, 1, 2)
  c.dataset = 'mnist1d'
  c.data_dir = ''
  c.data_samples = 0               # 0: the package's MNIST-1D (4000 train / 1000 test)
  c.progress = False
  c.batch_size = 100
  c.teacher_steps = 3000
  c.teacher_lr = 1e-3
  c.num_steps = 2000               # student updates per method (progressive: all stages)
  c.stage_steps = 200              # progressive: updates per layer stage (x depth)
  c.student_lr = 3e-3
  c.patch = 4
  c.teacher = {'width': 128, 'depth': 4, 'heads': 4}
  c.student = {'width': 32, 'depth': 4, 'heads': 4}
  c.ce_weight = 0.5
  c.kd_weight = 0.5
  c.temperature = 4.0
  c.attention_weight = 1.0
  c.hidden_weight = 1.0

  if mode == 'quick':
    c.results = 'transformer_quick'
    c.workdir = 'runs/transformer_quick'
    c.seeds = (0, 1)
    c.data_samples = 200
    c.batch_size = 20
    c.teacher_steps = 10
    c.num_steps = 12
    c.stage_steps = 2
    c.teacher = {'width': 8, 'depth': 2, 'heads': 2}
    c.student = {'width': 4, 'depth': 2, 'heads': 2}
  elif mode != 'default':
    raise ValueError(f"Unknown transformer mode {mode!r}; use 'default' or 'quick'.")
  return c
