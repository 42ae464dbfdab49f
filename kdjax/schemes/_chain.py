"""Chains of distillation runs: TAKD teacher assistants, sequential KD, born-again generations.

A chain ``M_0 → M_1 → … → M_n`` is a sequence of
:func:`kdjax.runs.train_and_evaluate` calls where link ``i`` distils ``M_i``
from the checkpoint of ``M_{i-1}`` (``teacher_checkpoint=`` the previous
link's ``checkpoint_dir``). There is no trainer class: the chain is the list
of runs, and the runs' orbax checkpoints are the links between them.

Run directories are nested by the path: model ``i`` trains in
``<workdir>/<names[0]>/<names[1]>/…/<names[i]>``. Two chains that share a
prefix (``T → TA → S`` and ``T → TA → TA₂ → S``) therefore share its runs,
which is how :func:`takd_sweep` trains every teacher and assistant once.
Re-running a chain resumes it: a link whose run is complete is restored from
its final checkpoint and not trained again (``RunResult.fit.resumed_from ==
num_steps``); a link that was interrupted continues from its last checkpoint.
Each link directory holds ``chain_link.json``, the link's settings (model,
teacher checkpoint and step, steps, learning rate, batch size, seed, terms,
options that change training); resuming with different settings raises
instead of mixing two experiments. Training data are not recorded: keep one
workdir per dataset.

References:
  Mirzadeh, Farajtabar, Li, Levine, Matsukawa & Ghasemzadeh, "Improved
  Knowledge Distillation via Teacher Assistant", AAAI 2020, arXiv:1902.03393.
  Cho & Hariharan, "On the Efficacy of Knowledge Distillation", ICCV 2019,
  arXiv:1910.01348.
  Furlanello, Lipton, Tschannen, Itti & Anandkumar, "Born-Again Neural
  Networks", ICML 2018, arXiv:1805.04770.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import flax.linen as nn

from kdjax import runs
from kdjax import steps
from kdjax.schemes import _schedules


Terms = Union[Sequence[steps.Term], Callable[[int], Sequence[steps.Term]]]
SPEC_FILE = 'chain_link.json'
_ADDRESS = re.compile(r' at 0x[0-9a-fA-F]+')
# Options of train_and_evaluate that do not change the trained model; they may
# differ when a link is resumed (so do ``keep_steps``).
_NO_EFFECT = frozenset({'eval_every', 'checkpoint_every', 'log_every', 'eval_batch_size'})


def kd_terms(alpha: _schedules.Weight = 0.1, temperature: float = 4.0) -> tuple[steps.Term, ...]:
  """Hinton's objective ``α·CE(y, s) + (1 − α)·τ²·KL(p_T^τ ‖ p_S^τ)``.

  ``alpha`` may be a schedule ``step -> α`` (see :mod:`kdjax.schemes`); the
  KD weight is then its :func:`~kdjax.schemes.complement`.

  Args:
    alpha: the weight of the label cross-entropy, a float or a schedule.
    temperature: τ of the soft-target term.

  Returns:
    ``(task_ce(α), soft_kd(1 − α, temperature=τ))``.

  Examples:
    >>> [(t.name, t.weight) for t in kd_terms(0.25)]
    [('ce', 0.25), ('kd', 0.75)]
  """
  if callable(alpha):
    return (steps.task_ce(alpha), steps.soft_kd(_schedules.complement(alpha),
                                                temperature=temperature))
  return (steps.task_ce(float(alpha)), steps.soft_kd(1.0 - float(alpha), temperature=temperature))


@dataclasses.dataclass
class ChainResult:
  """What :func:`distill_chain` returns; every list is aligned with ``models``.

  Attributes:
    names: the name of each model (its directory name).
    links: each model's :class:`~kdjax.runs.RunResult`; ``None`` for a
      teacher given as ``teacher_checkpoint``.
    workdirs: each model's run directory (``None`` for a given teacher).
    checkpoint_dirs: each model's checkpoint directory.
    reused: whether each link was complete on disk and restored rather than
      trained by this call (``None`` for a given teacher).
  """
  names: tuple[str, ...]
  links: list[Optional[runs.RunResult]]
  workdirs: list[Optional[str]]
  checkpoint_dirs: list[str]
  reused: list[Optional[bool]]

  @property
  def final(self) -> runs.RunResult:
    """The last link's result (the student at the end of the chain)."""
    return self.links[-1]

  def accuracies(self) -> dict[str, float]:
    """Test accuracy of every trained link, by name.

    Examples:
      >>> r = ChainResult(('t', 's'), [None, None], [None, None], ['a', 'b'], [None, None])
      >>> r.accuracies()
      {}
    """
    return {n: r.metrics['accuracy'] for n, r in zip(self.names, self.links) if r is not None}


def _describe(obj: Any) -> Any:
  """A stable, JSON-able description of a setting: its repr without memory addresses.

  Functions and closures (a loss, an optax optimizer) are described by their
  names only, so changing a closure's captured values goes unnoticed.
  """
  if obj is None or isinstance(obj, (bool, int, float, str)):
    return obj
  if isinstance(obj, (list, tuple)):
    return [_describe(o) for o in obj]
  if isinstance(obj, Mapping):
    return {str(k): _describe(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
  return _ADDRESS.sub('', repr(obj))


def _describe_terms(terms: Sequence[steps.Term]) -> list:
  return [{'name': t.name, 'loss': _describe(t.loss), 'weight': _describe(t.weight),
           'student': t.student, 'teacher': t.teacher, 'teacher_name': t.teacher_name,
           'labels': t.labels, 'adapter': _describe(t.adapter), 'kwargs': _describe(t.kwargs),
           **({} if t.module is None else {'module': _describe(t.module)})}
          for t in terms]


def _check_spec(workdir: str, spec: dict) -> None:
  """Writes ``spec`` to a new link directory, or checks it against the recorded one."""
  spec = json.loads(json.dumps(spec))
  path = os.path.join(workdir, SPEC_FILE)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old != spec:
      keys = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
      raise ValueError(
          f'The chain link in {workdir!r} was started with other settings (differing: '
          f'{keys}). Use another workdir, or delete that directory to retrain it.')
    return
  os.makedirs(workdir, exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(spec, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def _per_model(value: Any, n: int, name: str) -> list:
  if isinstance(value, (list, tuple)):
    if len(value) != n:
      raise ValueError(f'`{name}` has {len(value)} entries; give one per model ({n}) or a '
                       'single value.')
    return list(value)
  return [value] * n


def _check_names(names: Sequence[str]) -> tuple[str, ...]:
  for n in names:
    if (not isinstance(n, str) or not n or n in ('.', '..', 'checkpoints') or os.sep in n
        or (os.altsep and os.altsep in n)):
      raise ValueError(
          f'Invalid link name {n!r}: names are directory names (non-empty, no path '
          "separators, not '.', '..' or 'checkpoints').")
  return tuple(names)


def distill_chain(
    models: Sequence[nn.Module],
    *,
    train_data: Sequence[Any],
    eval_data: Sequence[Any],
    workdir: str | os.PathLike,
    num_steps: int | Sequence[int],
    learning_rate: float | Sequence[float] = 1e-3,
    batch_size: int | Sequence[int] = 100,
    seed: int | Sequence[int] = 0,
    terms: Optional[Terms] = None,
    teacher_terms: Optional[Sequence[steps.Term]] = None,
    teacher_checkpoint: Optional[str | os.PathLike] = None,
    teacher_step: Optional[int] | Sequence[Optional[int]] = None,
    keep_steps: Sequence[int] = (),
    names: Optional[Sequence[str]] = None,
    progress: bool = False,
    **run_kwargs: Any,
) -> ChainResult:
  """Runs the chain ``models[0] → models[1] → … → models[-1]``, resuming what is on disk.

  Link 0 trains ``models[0]`` with ``teacher_terms`` (from scratch), unless
  ``teacher_checkpoint`` gives it already trained. Link ``i ≥ 1`` distils
  ``models[i]`` with ``terms`` from link ``i − 1``'s checkpoint (at step
  ``teacher_step[i]``, by default the final one). TAKD is a chain
  ``T → TA → S`` (Mirzadeh et al., 2020); sequential KD is a chain of
  shrinking models and born-again networks a chain of one architecture
  (Cho & Hariharan, 2019; Furlanello et al., 2018).

  Settings given "per model" accept one value for every link or a sequence
  aligned with ``models`` (entry 0 is unused when ``teacher_checkpoint`` is
  given).

  Args:
    models: the chain's Linen modules, teacher first, final student last.
    train_data: the training source of every link.
    eval_data: the labeled test source of every link.
    workdir: the chain's root directory (see the module docstring).
    num_steps: updates per link (per model).
    learning_rate: peak learning rate per link (per model).
    batch_size: batch size per link (per model).
    seed: run seed (per model). Born-again generations of one architecture
      should differ in seed (:func:`born_again` does that).
    terms: the distillation objective of links ``i ≥ 1``: a sequence of
      :class:`~kdjax.steps.Term` or a factory ``i -> terms``; default
      :func:`kd_terms` (α = 0.1, τ = 4). Every link's terms must use a teacher.
    teacher_terms: the objective of link 0 when it is trained (default: the
      task cross-entropy).
    teacher_checkpoint: the checkpoint directory of an already trained
      ``models[0]``; then link 0 is not trained.
    teacher_step: per model, the step of the previous model's checkpoint that
      teaches it (``None``: the latest), e.g. an early-stopped teacher
      (Cho & Hariharan, 2019). The teaching link keeps that checkpoint.
    keep_steps: checkpoint steps every link keeps (and evaluates at).
    names: directory names of the models (default ``link0``, ``link1``, …).
    progress: show progress bars.
    **run_kwargs: further options of :func:`kdjax.runs.train_and_evaluate`
      (e.g. ``eval_every``, ``checkpoint_every``, ``transform``).

  Returns:
    A :class:`ChainResult`.

  Raises:
    ValueError: for fewer than two models, per-model settings of the wrong
      length, bad names, terms without a teacher, a ``teacher_step`` for
      model 0, or a link on disk that was started with other settings.
    FileNotFoundError: if ``teacher_checkpoint`` (or a teacher step) is missing.

  References:
    Mirzadeh et al., "Improved Knowledge Distillation via Teacher Assistant",
    AAAI 2020, arXiv:1902.03393.

  Examples:
    Training examples are skipped in doctests (tests/schemes/test_chain.py
    runs them); a chain, then the same call again, which restores every link:

    >>> from kdjax import data, models
    >>> src = data.load('mnist1d', 'train')  # doctest: +SKIP
    >>> test = data.load('mnist1d', 'test')  # doctest: +SKIP
    >>> args = dict(train_data=src, eval_data=test, workdir='runs/chain', num_steps=2000,
    ...             learning_rate=1e-2, names=['cnn', 'mlp'])  # doctest: +SKIP
    >>> chain = distill_chain([models.CNN1D(), models.MLP()], **args)  # doctest: +SKIP
    >>> again = distill_chain([models.CNN1D(), models.MLP()], **args)  # doctest: +SKIP
    >>> again.reused, again.final.fit.resumed_from  # doctest: +SKIP
    ([True, True], 2000)
  """
  models = list(models)
  n = len(models)
  if n < 2:
    raise ValueError(f'A chain needs at least two models (teacher and student), got {n}.')
  names = _check_names(names if names is not None else [f'link{i}' for i in range(n)])
  if len(names) != n:
    raise ValueError(f'`names` has {len(names)} entries for {n} models.')
  num_steps = _per_model(num_steps, n, 'num_steps')
  learning_rate = _per_model(learning_rate, n, 'learning_rate')
  batch_size = _per_model(batch_size, n, 'batch_size')
  seed = _per_model(seed, n, 'seed')
  scalar_step = not isinstance(teacher_step, (list, tuple))
  teacher_step = _per_model(teacher_step, n, 'teacher_step')
  if teacher_step[0] is not None:
    if not scalar_step:
      raise ValueError('`teacher_step[0]` must be None: model 0 has no teacher in the chain.')
    teacher_step[0] = None  # One step for every link: entry 0 has no teacher.
  teacher_terms = tuple(teacher_terms) if teacher_terms is not None else (steps.task_ce(),)
  if terms is None:
    terms = kd_terms()
  link_terms = [None] + [tuple(terms(i) if callable(terms) else terms) for i in range(1, n)]
  for i in range(1, n):
    if not any(t.teacher is not None for t in link_terms[i]):
      raise ValueError(f'The terms of link {i} ({names[i]!r}) use no teacher: nothing would be '
                       'distilled. Add e.g. kdjax.steps.soft_kd().')
  root = os.path.abspath(os.fspath(workdir))

  result = ChainResult(names, [None] * n, [None] * n, [''] * n, [None] * n)
  start = 0
  if teacher_checkpoint is not None:
    result.checkpoint_dirs[0] = os.path.abspath(os.fspath(teacher_checkpoint))
    start = 1
  for i in range(start, n):
    link_dir = os.path.join(root, *names[:i + 1])
    teacher_dir = result.checkpoint_dirs[i - 1] if i > 0 else None
    keep = sorted(set(int(s) for s in keep_steps) |
                  ({int(teacher_step[i + 1])} if i + 1 < n and teacher_step[i + 1] is not None
                   else set()))
    objective = teacher_terms if i == 0 else link_terms[i]
    spec = {
        'model': _describe(models[i]), 'teacher_checkpoint': teacher_dir,
        'teacher_step': teacher_step[i] if i > 0 else None, 'num_steps': int(num_steps[i]),
        'learning_rate': float(learning_rate[i]), 'batch_size': int(batch_size[i]),
        'seed': int(seed[i]), 'terms': _describe_terms(objective),
        'options': _describe({k: v for k, v in run_kwargs.items() if k not in _NO_EFFECT}),
    }
    _check_spec(link_dir, spec)
    teacher_kwargs = {} if i == 0 else dict(
        teacher=models[i - 1], teacher_checkpoint=teacher_dir, teacher_step=teacher_step[i])
    res = runs.train_and_evaluate(
        models[i], train_data=train_data, eval_data=eval_data, num_steps=int(num_steps[i]),
        batch_size=int(batch_size[i]), learning_rate=float(learning_rate[i]), seed=int(seed[i]),
        terms=objective, workdir=link_dir, keep_steps=tuple(keep), progress=progress,
        desc=f'{names[i]} ({i}/{n - 1})', **teacher_kwargs, **run_kwargs)
    result.links[i] = res
    result.workdirs[i] = link_dir
    result.checkpoint_dirs[i] = res.checkpoint_dir
    result.reused[i] = (res.fit.resumed_from is not None
                        and res.fit.resumed_from >= int(num_steps[i]))
  return result


def assistant_paths(names: Sequence[str], *, exhaustive: bool = False) -> list[tuple[str, ...]]:
  """Teacher-to-student paths through a ladder ``[T, A_1, …, A_k, S]`` of assistants.

  Mirzadeh et al. (2020, §5) compare direct KD ``T → S``, one assistant
  ``T → A_i → S`` for each size, and longer paths up to the full ladder.

  Args:
    names: the ladder, teacher first, student last, assistants in between in
      decreasing size.
    exhaustive: every path that keeps the ladder's order (``2^k`` of them,
      shortest first) instead of direct, single-assistant and full paths.

  Returns:
    A list of name tuples, each from ``names[0]`` to ``names[-1]``, without
    duplicates.

  Raises:
    ValueError: for fewer than two names or repeated names.

  References:
    Mirzadeh et al., "Improved Knowledge Distillation via Teacher Assistant",
    AAAI 2020, arXiv:1902.03393.

  Examples:
    >>> assistant_paths(['T', 'A1', 'A2', 'S'])
    [('T', 'S'), ('T', 'A1', 'S'), ('T', 'A2', 'S'), ('T', 'A1', 'A2', 'S')]
    >>> len(assistant_paths(['T', 'A1', 'A2', 'A3', 'S'], exhaustive=True))
    8
  """
  names = tuple(names)
  if len(names) < 2:
    raise ValueError(f'`names` needs a teacher and a student, got {names}.')
  if len(set(names)) != len(names):
    raise ValueError(f'`names` must be unique, got {names}.')
  t, mids, s = names[0], names[1:-1], names[-1]
  if exhaustive:
    subsets = [c for r in range(len(mids) + 1) for c in itertools.combinations(mids, r)]
  else:
    subsets = [()] + [(m,) for m in mids] + [mids]
  paths = []
  for sub in subsets:
    path = (t, *sub, s)
    if path not in paths:
      paths.append(path)
  return paths


def _by_name(value: Any, names: Sequence[str], what: str) -> list:
  if isinstance(value, Mapping):
    missing = [n for n in names if n not in value]
    if missing:
      raise ValueError(f'`{what}` has no entry for {missing}.')
    return [value[n] for n in names]
  return [value] * len(names)


def takd_sweep(
    ladder: Mapping[str, nn.Module],
    *,
    train_data: Sequence[Any],
    eval_data: Sequence[Any],
    workdir: str | os.PathLike,
    num_steps: int | Mapping[str, int],
    learning_rate: float | Mapping[str, float] = 1e-3,
    seed: int | Mapping[str, int] = 0,
    terms: Optional[Union[Sequence[steps.Term], Callable[[str], Sequence[steps.Term]]]] = None,
    paths: Optional[Sequence[Sequence[str]]] = None,
    exhaustive: bool = False,
    teacher_checkpoint: Optional[str | os.PathLike] = None,
    progress: bool = False,
    **chain_kwargs: Any,
) -> dict[tuple[str, ...], ChainResult]:
  """TAKD: distils the ladder's student along several assistant paths, sharing common links.

  Every path (default :func:`assistant_paths` of the ladder: direct KD, each
  single assistant and the full path) is a :func:`distill_chain` in the same
  ``workdir``; paths with a common prefix share its runs, so the teacher and
  each ``T → A`` link are trained once.

  Args:
    ladder: ``{name: model}`` in order: teacher first, student last.
    train_data: the training source.
    eval_data: the labeled test source.
    workdir: the sweep's root directory.
    num_steps: updates of every run, or ``{name: steps}`` by the trained model.
    learning_rate: peak learning rate, or ``{name: lr}``.
    seed: run seed, or ``{name: seed}``.
    terms: the distillation objective, or a factory ``student_name -> terms``
      (default :func:`kd_terms`).
    paths: explicit paths (name tuples from the teacher to the student).
    exhaustive: with ``paths=None``, every ordered path (see
      :func:`assistant_paths`).
    teacher_checkpoint: an already trained teacher (then it is not trained).
    progress: show progress bars.
    **chain_kwargs: further options of :func:`distill_chain`.

  Returns:
    ``{path: ChainResult}``.

  Raises:
    ValueError: for a path that does not start at the teacher and end at the
      student, or unknown names.

  References:
    Mirzadeh et al., "Improved Knowledge Distillation via Teacher Assistant",
    AAAI 2020, arXiv:1902.03393.

  Examples:
    Skipped in doctests (tests/schemes/test_chain.py runs a sweep). The second
    path reuses the teacher trained by the first:

    >>> from kdjax import data, models
    >>> src = data.load('mnist1d', 'train')  # doctest: +SKIP
    >>> test = data.load('mnist1d', 'test')  # doctest: +SKIP
    >>> ladder = {'T': models.CNN1D(channels=64), 'A': models.CNN1D(channels=16),
    ...           'S': models.CNN1D(channels=4)}
    >>> out = takd_sweep(ladder, train_data=src, eval_data=test, workdir='runs/sweep',
    ...                  num_steps=2000, learning_rate=1e-2)  # doctest: +SKIP
    >>> sorted(out), out[('T', 'A', 'S')].reused  # doctest: +SKIP
    ([('T', 'A', 'S'), ('T', 'S')], [True, False, False])
  """
  names = list(ladder)
  if paths is None:
    paths = assistant_paths(names, exhaustive=exhaustive)
  out = {}
  for path in paths:
    path = tuple(path)
    unknown = [p for p in path if p not in ladder]
    if unknown:
      raise ValueError(f'Path {path} names models not in the ladder: {unknown}.')
    if len(path) < 2 or path[0] != names[0] or path[-1] != names[-1]:
      raise ValueError(f'Path {path} must go from the teacher {names[0]!r} to the student '
                       f'{names[-1]!r}.')
    if callable(terms):
      path_terms = lambda i, path=path: terms(path[i])  # pylint: disable=cell-var-from-loop
    else:
      path_terms = terms
    out[path] = distill_chain(
        [ladder[p] for p in path], train_data=train_data, eval_data=eval_data, workdir=workdir,
        num_steps=_by_name(num_steps, path, 'num_steps'),
        learning_rate=_by_name(learning_rate, path, 'learning_rate'),
        seed=_by_name(seed, path, 'seed'), terms=path_terms, teacher_checkpoint=teacher_checkpoint,
        names=path, progress=progress, **chain_kwargs)
  return out


def born_again(
    model: nn.Module,
    *,
    generations: int,
    train_data: Sequence[Any],
    eval_data: Sequence[Any],
    workdir: str | os.PathLike,
    num_steps: int,
    learning_rate: float = 1e-3,
    seed: int = 0,
    terms: Optional[Terms] = None,
    teacher_checkpoint: Optional[str | os.PathLike] = None,
    progress: bool = False,
    **chain_kwargs: Any,
) -> ChainResult:
  """Born-again networks: generations ``S_0 → S_1 → … → S_k`` of one architecture.

  ``S_0`` is trained from scratch (or given as ``teacher_checkpoint``); each
  next generation is distilled from the previous one. Generation ``g`` uses
  seed ``seed + 1000·g`` so the generations start from different
  initialisations. The generations' ensemble (:func:`evaluate_ensemble` on
  ``[(model, r.state.variables) for r in result.links[1:]]``) is the paper's
  BAN ensemble.

  Args:
    model: the architecture of every generation.
    generations: ``k``, the number of distilled generations (≥ 1).
    train_data: the training source.
    eval_data: the labeled test source.
    workdir: root directory; generation ``g`` runs in ``…/gen0/…/gen<g>``.
    num_steps: updates per generation.
    learning_rate: peak learning rate.
    seed: base seed.
    terms: the distillation objective; default: the teacher's output
      distribution alone, ``τ = 1`` (``task_ce(0), soft_kd(1, temperature=1)``;
      the label term has weight 0 and is logged only), as in Furlanello et al.
      (2018, §3). ``kd_terms(α, τ)`` adds the labels.
    teacher_checkpoint: an already trained ``S_0``.
    progress: show progress bars.
    **chain_kwargs: further options of :func:`distill_chain`.

  Returns:
    The :class:`ChainResult` with ``k + 1`` entries (``gen0`` … ``gen<k>``).

  Raises:
    ValueError: for ``generations < 1``.

  References:
    Furlanello et al., "Born-Again Neural Networks", ICML 2018,
    arXiv:1805.04770.

  Examples:
    Skipped in doctests (tests/schemes/test_chain.py trains a generation):

    >>> from kdjax import data, models
    >>> from kdjax.schemes import evaluate_ensemble
    >>> src = data.load('mnist1d', 'train')  # doctest: +SKIP
    >>> test = data.load('mnist1d', 'test')  # doctest: +SKIP
    >>> model = models.CNN1D(channels=16)
    >>> ban = born_again(model, generations=3, train_data=src, eval_data=test, num_steps=2000,
    ...                  workdir='runs/ban', learning_rate=1e-2)  # doctest: +SKIP
    >>> ban.names  # doctest: +SKIP
    ('gen0', 'gen1', 'gen2', 'gen3')
    >>> members = [(model, r.state.variables) for r in ban.links[1:]]  # doctest: +SKIP
    >>> evaluate_ensemble(members, test)['accuracy']  # doctest: +SKIP
  """
  if generations < 1:
    raise ValueError(f'`generations` must be >= 1, got {generations}.')
  if terms is None:
    terms = (steps.task_ce(0.0), steps.soft_kd(1.0, temperature=1.0))
  n = generations + 1
  return distill_chain(
      [model] * n, train_data=train_data, eval_data=eval_data, workdir=workdir,
      num_steps=num_steps, learning_rate=learning_rate,
      seed=[seed + 1000 * g for g in range(n)], terms=terms,
      teacher_checkpoint=teacher_checkpoint, names=[f'gen{g}' for g in range(n)],
      progress=progress, **chain_kwargs)
