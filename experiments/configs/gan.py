"""GAN feature distillation on 8x8 scikit-learn digits: student generator alone vs distilled.

Teacher: a class-conditional WGAN-GP generator of width 32; student: width 8
(a quarter). Per seed the teacher is trained, then the student twice for the
same number of updates: alone (a GAN from scratch) and distilled (L1 to the
teacher's image, feature matching at stages 2 and 3, adversarial term against
the teacher's fine-tuned critic). ``python -m experiments.run --config
experiments/configs/gan.py``: 3 seeds, 1200 teacher and 800 student updates;
its training took 1576 s (setup.json ``train_seconds``; 28 minutes end to end,
with compilation and evaluation) on 2 CPU cores shared with other jobs. Each
GAN step is one jitted Python call (``compiled = False``): the scanned loop
compiles slowly for these conv models on CPU. ``:quick`` is a smoke run on
tiny models and a few steps.
"""

import ml_collections


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = 'gan'
  c.results = 'gan'              # experiments/results/<results>/
  c.workdir = 'runs/gan'         # teacher and classifier checkpoints, finished student records
  c.fresh = False
  c.seeds = (0, 1, 2)
  c.dataset = 'digits'
  c.data_dir = ''
  c.data_samples = 0             # 0: the whole digits split (1437 train / 360 test)
  c.progress = False
  c.compiled = False             # one jitted call per step (the scan compiles slowly on CPU)
  c.batch_size = 64
  # The Fréchet feature space: a plain CNN classifier (trained once).
  c.classifier_model = 'plain_cnn_4'
  c.classifier = {}
  c.classifier_steps = 1000
  c.classifier_lr = 1e-3
  c.classifier_seed = 0
  # The GAN game. Adam for both players: the teacher's, and the students' (alone and
  # distilled alike). A throwaway 400-step run of the teacher at the students' lr 1e-3
  # collapsed to stripes; 800 steps at 2e-4 with β₁ = 0 (WGAN-GP's) gave recognisable digits.
  c.noise_dim = 32
  c.teacher_lr = 2e-4
  c.teacher_b1 = 0.0
  c.lr = 1e-3
  c.b1 = 0.5
  c.b2 = 0.9
  c.gp_weight = 10.0
  c.critic_steps = 1
  c.teacher = {'width': 32}
  c.student = {'width': 8}
  c.critic = {'widths': (32, 64)}
  c.teacher_steps = 1200
  c.num_steps = 800              # student updates, alone and distilled
  # Distillation terms (GAN compression).
  c.output_weight = 10.0
  c.output_loss = 'l1'
  c.feature_weight = 1.0
  c.features = ('stage2', 'stage3')
  c.adversarial_weight = 1.0
  # Evaluation.
  c.eval_per_class = 100
  c.grid_columns = 8

  if mode == 'quick':
    c.results = 'gan_quick'
    c.workdir = 'runs/gan_quick'
    c.seeds = (0, 1)
    c.data_samples = 300
    c.batch_size = 16
    c.classifier_steps = 20
    c.classifier = {'plan': (((4,), (8,)), ())}
    c.teacher = {'width': 4}
    c.student = {'width': 2}
    c.critic = {'widths': (4, 8)}
    c.teacher_steps = 10
    c.num_steps = 8
    c.eval_per_class = 10
    c.grid_columns = 4
  elif mode != 'default':
    raise ValueError(f"Unknown gan mode {mode!r}; use 'default' or 'quick'.")
  return c
