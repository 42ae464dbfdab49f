"""The benchmarks' measurements and a short run of each (timings are not asserted)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.bench import _measure


def test_compiled_flops_of_a_matmul():
  compiled = jax.jit(jnp.matmul).lower(jnp.ones((8, 16)), jnp.ones((16, 4))).compile()
  assert _measure.compiled_flops(compiled) == pytest.approx(2 * 8 * 16 * 4, rel=0.01)


def test_compiled_memory_and_rss_are_reported():
  compiled = jax.jit(lambda x: x * 2).lower(jnp.ones((256,))).compile()
  memory = _measure.compiled_memory(compiled)
  assert memory['argument_bytes'] == 1024
  assert _measure.rss_bytes() > 0
  assert _measure.matmul_peak(n=64, repeats=2) > 0


@pytest.mark.long
@pytest.mark.slow
def test_cohort_bench_row_for_one_model():
  from experiments.bench import cohort
  row = cohort.bench_model('mlp', 2, in_shape=(40,), batch_size=8, min_steps=1,
                           min_seconds=0.0, rounds=1)
  assert row['model'] == 'mlp' and row['K'] == 2
  for variant in ('vmapped', 'unrolled', 'loop'):
    assert row[f'{variant}_steps_per_s'] > 0 and row[f'{variant}_flops_per_step'] > 0
  # The loop recomputes each peer's forward for the targets, so it counts more FLOPs.
  assert row['loop_flops_per_step'] > row['vmapped_flops_per_step']
  table = cohort.markdown({'rows': [row], 'matmul_peak_flop_per_s': 1e11, 'jax': jax.__version__,
                           'device': 'cpu', 'cpu_count': 2, 'load_average_start': 0.0,
                           'load_average_end': 0.0})
  assert '| mlp | 2 | 8 |' in table


@pytest.mark.long
@pytest.mark.slow
def test_train_loop_bench_rows(data_dir):
  from experiments.bench import train_loop
  recipe = train_loop.bench_recipe(True, num_steps=4, steps_per_call=2, repeats=1,
                                   student_hidden=(8,), data_dir=data_dir)
  assert [r['variant'] for r in recipe['rows']] == list(train_loop.VARIANTS)
  assert recipe['flops_per_step'] > 0
  for r in recipe['rows']:
    assert r['e2e_ms_per_step'] > 0 and r['marginal_ms_per_step'] > 0
  floor = recipe['rows'][train_loop.VARIANTS.index('floor')]
  assert floor['e2e_over_floor'] == floor['marginal_over_floor'] == 1.0
  table = train_loop.markdown({'recipes': [recipe], 'matmul_peak_flop_per_s': 1e11,
                               'jax': jax.__version__, 'device': 'cpu', 'cpu_count': 2,
                               'load_average_start': 0.0, 'load_average_end': 0.0})
  assert table.count('| KD cnn1d → mlp (N=4, batch 100) |') == 4
  overhead = train_loop.bench_kd_overhead(num_steps=3, repeats=1, student_hidden=(8,),
                                          data_dir=data_dir)
  assert overhead['kd_over_parts'] > 0 and set(overhead['ms_per_step']) == {
      'KD step', 'student step alone', 'teacher forward alone'}
  assert 'KD / (student + teacher)' in train_loop.markdown(
      {'recipes': [], 'kd_overhead': overhead, 'matmul_peak_flop_per_s': 1e11, 'jax': '',
       'device': 'cpu', 'load_average_start': 0.0, 'load_average_end': 0.0})
  rows = train_loop.bench_efficiency(('mlp-8', 'cnn1d'), num_steps=2, batch_size=4, repeats=1,
                                     data_dir=data_dir)
  assert [r['model'] for r in rows] == ['mlp-8', 'cnn1d']
  assert all(r['scan_flop_per_s'] > 0 and r['Python loop_flop_per_s'] > 0 for r in rows)
  assert rows[1]['flops_per_step'] > rows[0]['flops_per_step']
  assert '| cnn1d | 4 |' in train_loop.markdown(
      {'recipes': [], 'efficiency': rows, 'matmul_peak_flop_per_s': 1e11, 'jax': '',
       'device': 'cpu', 'load_average_start': 0.0, 'load_average_end': 0.0})


@pytest.mark.long
@pytest.mark.slow
def test_cache_bench_times_both_loops(data_dir):
  from experiments.bench import cache
  pair = cache.bench_pair('cnn1d→mlp', min_steps=2, min_seconds=0.0, rounds=1, num_batches=2,
                          data_dir=data_dir)
  assert [r['variant'] for r in pair['rows']] == [
      'student only', 'live teacher', 'cached (full)', f'cached (top-{cache.TOPK})']
  for r in pair['rows']:
    assert r['steps_per_s'] > 0 and r['scan_steps_per_s'] > 0
  assert pair['scan_cached_over_floor'] > 0
  assert pair['cache_full_bytes'] >= 4000 * 10 * 4  # [N, C] float32 logits
  table = cache.markdown({'pairs': [pair], 'matmul_peak_flop_per_s': 1e11, 'jax': '',
                          'device': 'cpu', 'load_average_start': 0.0, 'load_average_end': 0.0})
  assert table.count('| cnn1d→mlp |') == 5 and 'scan: steps/s' in table


def test_train_loop_floor_loss_matches_hinton_kd():
  from experiments.bench import train_loop
  from kdjax import losses
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(2, 5, 3)).astype(np.float32)
  labels = np.array([0, 2, 1, 1, 0])
  apply_fn = lambda v, x: x * v['params']  # noqa: E731
  got = train_loop._floor_loss(apply_fn, 1.0, t, {'x': s, 'label': labels})
  ce = -jax.nn.log_softmax(s)[np.arange(5), labels].mean()
  kd = losses.kl_distillation(s, t, temperature=train_loop.TEMPERATURE).mean()  # τ² included
  np.testing.assert_allclose(got, 0.1 * ce + 0.9 * kd, rtol=1e-5)


@pytest.mark.long
@pytest.mark.slow
def test_accelerator_script_runs_tiny_on_cpu(tmp_path):
  import json
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, TINY='1', PYTHON=sys.executable, TFDS_DATA_DIR=str(tmp_path / 'tfds'),
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([os.path.join(root, 'experiments', 'bench', 'accelerator.sh'),
                         str(tmp_path / 'out')], cwd=root, env=env, capture_output=True,
                        text=True, timeout=400)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  summary = json.loads((tmp_path / 'out' / 'accelerator.json').read_text())
  assert summary['platform'] == 'cpu'
  for name, path in summary['results'].items():
    result = json.loads(open(path).read())
    assert result['matmul_peak_flop_per_s'] > 0, name
  conv = json.loads(open(summary['results']['convolutions']).read())
  assert {(r['batch'], r['dtype']) for r in conv['rows']} == {(8, 'float32'), (8, 'bfloat16')}
  assert all(r['images_per_s'] > 0 for r in conv['rows'])


def _dense_row(model, compiled, ms):
  return {'model': model, 'compiled': compiled, 'batch_size': 16, 'num_steps': 2,
          'image_size': 32, 'ms_per_step': ms, 'images_per_second': 16e3 / ms,
          'first_chunk_seconds': 3.0, 'flops_per_step': 1e9, 'flop_fraction_of_peak': 0.1}


def test_dense_bench_output_is_what_the_experiments_quote(tmp_path):
  import json

  from experiments import detection
  from experiments.bench import dense
  speed = {'what': 'step time', 'script': 'python -m experiments.bench.dense',
           'steps': [_dense_row('teacher', False, 20.0), _dense_row('teacher', True, 400.0)]}
  (tmp_path / 'step_speed.json').write_text(json.dumps(speed))
  note = detection.speed_note(str(tmp_path))
  assert note.startswith(
      'Step speed (`step_speed.json`, `python -m experiments.bench.dense`: step time')
  assert 'teacher per step: 800 images/s (20 ms/step, batch 16, 32 px)' in note
  assert 'teacher scanned: 40 images/s (400 ms/step' in note
  table = dense.markdown({'device': 'cpu', 'cpu_count': 2, 'load_average_start': 0.0,
                          'load_average_end': 1.0, 'matmul_peak_flop_per_s': 1e11,
                          'experiments': {'detection': speed}})
  assert '| detection | teacher | per step | 2 | 20.0 | 800 | 3.0 | 50.00 (10.0%) |' in table


@pytest.mark.long
@pytest.mark.slow
def test_dense_bench_runs_every_case(data_dir):
  from experiments.bench import dense
  from experiments.configs import detection as detection_config
  config = detection_config.get_config('quick')
  config.data_dir = data_dir
  speed = dense.bench_experiment('detection', config, num_steps=2, scanned_steps=1, peak=1e11)
  assert [(r['model'], r['compiled']) for r in speed['steps']] == [
      (m, c) for m in ('teacher', 'student scratch', 'student +both') for c in (False, True)]
  for r in speed['steps']:
    assert r['ms_per_step'] > 0 and r['flops_per_step'] > 0 and r['first_chunk_seconds'] > 0
  # The all-terms student also runs the teacher's forward: more FLOPs than scratch.
  assert speed['steps'][4]['flops_per_step'] > speed['steps'][2]['flops_per_step']
