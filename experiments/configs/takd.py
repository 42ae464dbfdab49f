"""TAKD on MNIST-1D: teacher assistants vs direct KD as the teacher/student gap grows.

A ladder of 1D CNNs of decreasing width (64 → 32 → 16 → 8 → 4 channels). For
each student (``students``) every path of :func:`kdjax.schemes.assistant_paths`
is run: direct KD, one assistant of each size, and the full ladder. Links
shared by several paths (the teacher, ``T → A``) are trained once.

``python -m experiments.run --config experiments/configs/takd.py`` (about 6
minutes on 2 cores); ``:quick`` is a smoke run on a tiny MLP ladder.
"""

import ml_collections


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = 'takd'
  c.mode = mode
  c.results = 'takd'        # experiments/results/<results>/
  c.workdir = 'runs/takd'
  c.seeds = (0, 1, 2)
  c.data_dir = ''
  c.data_samples = 0        # 0: the package's MNIST-1D (4000 train / 1000 test)
  c.progress = False
  c.batch_size = 100
  # Ladder, teacher first: (directory name, registry model, kwargs). Names are
  # directory names; paths are ordered by this list.
  c.ladder = (('cnn64', 'cnn1d', {'channels': 64}),
              ('cnn32', 'cnn1d', {'channels': 32}),
              ('cnn16', 'cnn1d', {'channels': 16}),
              ('cnn8', 'cnn1d', {'channels': 8}),
              ('cnn4', 'cnn1d', {'channels': 4}))
  c.students = ('cnn8', 'cnn4')  # each gets direct, single-TA and full-ladder paths
  c.scratch_all = True      # also train every assistant from scratch (direct-KD gain table)
  c.teacher_steps = 3000
  c.teacher_lr = 1e-2
  c.student_steps = 2000       # every distilled or scratch link
  c.student_lr = 1e-2
  # loss = alpha*CE + (1-alpha)*tau^2*KL, the same in every link.
  c.kd = ml_collections.ConfigDict(dict(alpha=0.1, temperature=4.0))

  if mode == 'quick':
    c.results = 'takd_quick'
    c.workdir = 'runs/takd_quick'
    c.seeds = (0,)
    c.data_samples = 200
    c.batch_size = 40
    c.ladder = (('T', 'mlp', {'hidden': (16,)}), ('A', 'mlp', {'hidden': (8,)}),
                ('S', 'mlp', {'hidden': (4,)}))
    c.students = ('S',)
    c.scratch_all = False
    c.teacher_steps = 10
    c.student_steps = 10
  elif mode != 'default':
    raise ValueError(f"Unknown takd mode {mode!r}; use 'default' or 'quick'.")
  return c
