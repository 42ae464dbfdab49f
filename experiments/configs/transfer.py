"""Transfer-set controls for the demo's headline: soft targets vs true labels vs hard labels.

Per seed, a CNN1D teacher and an MLP(100, 100) student: from scratch and with
KD on the 4,000 labeled MNIST-1D examples, and on 50,000 generated inputs
with the teacher's soft targets (the demo's transfer-set KD), with the same
inputs' true labels, and with the teacher's hard labels, all at the same
number of steps. Each student's learning rate (and the transfer KD
temperature) is chosen on a separate generated validation set from the grid
below, with the tuning seed; the test split is evaluated once per seed.
``python -m experiments.run --config experiments/configs/transfer.py``;
``:quick`` is a smoke run on tiny models and sets. The measured time is in
``results/transfer/setup.json`` (``facts.train_seconds``).

The teacher's recipe (5000 steps at 1e-2) and the labeled KD's α = 0.1, τ = 4
are the demo's, which were picked in an earlier sweep on the test split; they
are not tuned here (the claims tested are about the students).
"""

import ml_collections


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = 'transfer'
  c.results = 'transfer'          # experiments/results/<results>/
  c.workdir = 'runs/transfer'     # checkpoints; complete runs are restored, not retrained
  c.fresh = False
  c.seeds = tuple(range(10))
  c.tuning_seed = 0               # the seed whose runs choose each method's settings
  c.data_dir = ''
  c.data_samples = 0              # 0: the package's MNIST-1D (4000 train / 1000 test)
  c.progress = False
  c.batch_size = 100
  c.teacher = ml_collections.ConfigDict(dict(
      model='cnn1d', kwargs={}, num_steps=5000, learning_rate=1e-2))
  c.student = ml_collections.ConfigDict(dict(model='mlp', kwargs={'hidden': (100, 100)}))
  c.labeled_steps = 3000          # students on the labeled set
  c.transfer_steps = 10_000       # students on the transfer set (every control alike)
  c.transfer = ml_collections.ConfigDict(dict(num_samples=50_000, seed=1))
  c.validation = ml_collections.ConfigDict(dict(num_samples=2000, seed=3))
  c.kd = ml_collections.ConfigDict(dict(alpha=0.1, temperature=4.0))
  c.grid = ml_collections.ConfigDict(dict(
      learning_rate=(1e-3, 3e-3, 1e-2), transfer_temperature=(1.0, 2.0, 4.0)))

  if mode == 'quick':
    c.results = 'transfer_quick'
    c.workdir = 'runs/transfer_quick'
    c.seeds = (0, 1)
    c.data_samples = 300
    c.batch_size = 20
    c.teacher.num_steps = 30
    c.teacher.kwargs = {'channels': 4}
    c.student.kwargs = {'hidden': (8,)}
    c.labeled_steps = 10
    c.transfer_steps = 20
    c.transfer.num_samples = 200
    c.validation.num_samples = 100
    c.grid.learning_rate = (1e-3, 1e-2)
    c.grid.transfer_temperature = (1.0, 2.0)
  elif mode != 'default':
    raise ValueError(f"Unknown transfer mode {mode!r}; use 'default' or 'quick'.")
  return c
