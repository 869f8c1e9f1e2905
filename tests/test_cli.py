"""Tests of the command line (python -m optimflow compare / bench / list)."""

import dataclasses
import json
from pathlib import Path
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from optimflow import catalog
from optimflow.lab import cli
from optimflow.lab import runs as compare

ROOT = Path(__file__).resolve().parents[1]


def _fails(capsys, argv, *expected):
  with pytest.raises(SystemExit) as exc:
    cli.main(argv)
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1, err  # one line
  assert 'Traceback' not in err
  for text in expected:
    assert text in err, err
  return err


@pytest.mark.parametrize(
  'argv, expected',
  [
    (
      ['compare', '--task', 'cifar'],
      (
        "unknown task 'cifar'",
        'digits, digits-cnn, charlm, rosenbrock, rastrigin',
      ),
    ),
    (
      ['compare', '--methods', 'lion,nope'],
      (
        'unknown method(s) nope',
        'valid methods: all,',
        'lion_kappa',
        'adamw',
        'optax.muon',
      ),
    ),
    (['compare', '--methods', ' , '], ('--methods is empty',)),
    (['compare', '--steps', '0'], ('--steps', 'positive integer, got 0')),
    (['compare', '--steps', 'ten'], ('--steps', "got 'ten'")),
    (['compare', '--seeds', '-2'], ('--seeds', 'positive integer, got -2')),
    (['compare', '--batch-size', '0'], ('--batch-size',)),
    (
      ['compare', '--methods', 'lion', '--batch-size', '100000'],
      (
        '--batch-size 100000 is larger than the digits training set '
        '(1347 examples)',
      ),
    ),
    (
      ['compare', '--set', 'lion.learning_rate'],
      ("malformed --set 'lion.learning_rate'", 'method.key=value'),
    ),
    (['compare', '--set', 'learning_rate=1e-3'], ('malformed --set',)),
    (['compare', '--set', 'lion.=1e-3'], ('malformed --set',)),
    (['compare', '--set', 'lion.learning_rate='], ('malformed --set',)),
    (
      ['compare', '--methods', 'lion', '--set', 'lion.lr=1e-3'],
      ('lion has no hyperparameter lr', 'valid: learning_rate', 'b1'),
    ),
    (
      ['compare', '--methods', 'lion', '--set', 'adamw.learning_rate=1e-3'],
      ('--set names adamw, which is not among the methods run (lion)',),
    ),
    (
      ['compare', '--methods', 'lion', '--set', 'lion.learning_rate=-1'],
      ('lion(', 'learning_rate=-1', 'out of range'),
    ),
    (
      ['compare', '--methods', 'optax.lion', '--set', 'optax.lion.b1=nonsense'],
      ('optax.lion(',),
    ),
    (
      ['compare', '--task', 'digits', '--tune-lr'],
      ('--tune-lr is for the 2-D functions, not digits',),
    ),
    (
      ['bench', '--trees', 'vgg'],
      ('unknown tree(s) vgg', 'valid trees:', 'transformer', 'resnet'),
    ),
    (
      ['bench', '--cases', 'lion,zzz'],
      ('unknown case(s) zzz', 'valid cases:', 'optax.lion'),
    ),
    (['bench', '--reps', '0'], ('--reps', 'positive integer, got 0')),
    (['frobnicate'], ('invalid choice',)),
    ([], ('required',)),
  ],
)
def test_bad_input_exits_2_with_one_line(capsys, argv, expected):
  _fails(capsys, argv, *expected)


@pytest.mark.parametrize(
  'command',
  [
    ['compare', '--methods', 'lion', '--steps', '1'],
    ['bench', '--trees', 'tiny-resnet', '--cases', 'lion'],
  ],
)
def test_unwritable_output_folder(capsys, tmp_path, command):
  blocker = tmp_path / 'file.txt'
  blocker.write_text('not a folder')
  _fails(
    capsys,
    command + ['--output', str(blocker / 'sub')],
    'cannot write to output folder',
    'file.txt',
  )


def test_module_entry_point_has_no_traceback():
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'optimflow',
      'compare',
      '--set',
      'lion.bogus=1',
      '--methods',
      'lion',
    ],
    cwd=tempfile.gettempdir(),
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert proc.returncode == 2
  assert 'Traceback' not in proc.stderr
  assert proc.stderr.strip() == (
    'optimflow compare: error: lion has no hyperparameter bogus; valid: '
    + ', '.join(compare.hyperparameter_names('lion'))
  )


def test_help_documents_tasks_methods_and_options(capsys):
  with pytest.raises(SystemExit) as exc:
    cli.main(['compare', '--help'])
  assert exc.value.code == 0
  out = capsys.readouterr().out
  for text in (
    '--task',
    '--methods',
    '--set',
    '--seeds',
    '--steps',
    '--output',
    '--batch-size',
    'METHOD.KEY=VALUE',
    'results.md',
    'trajectories.png',
    '"all"',
    *compare.TASKS,
    *compare.BASELINES,
    *compare.catalog_methods(),
  ):
    assert text in out, text
  with pytest.raises(SystemExit):
    cli.main(['bench', '--help'])
  out = capsys.readouterr().out
  for text in (
    '--trees',
    '--cases',
    '--reps',
    '--no-torch',
    'bench.json',
    'floor',
  ):
    assert text in out, text


def test_parse_set_values():
  assert cli.parse_set('sam.rho=0.1') == ('sam', 'rho', 0.1)
  assert cli.parse_set('muon.nesterov=false') == ('muon', 'nesterov', False)
  assert cli.parse_set('swan.output_scale=None') == (
    'swan',
    'output_scale',
    None,
  )
  assert cli.parse_set(' lion . weight_decay = 2 ') == (
    'lion',
    'weight_decay',
    2,
  )
  with pytest.raises(ValueError, match='malformed'):
    cli.parse_set('lion')


def test_list_prints_catalog(capsys):
  assert cli.main(['list']) == 0
  out = capsys.readouterr().out
  assert out.splitlines()[0].split() == ['name', 'family', 'kind', 'paper']
  for m in catalog.METHODS:
    assert m.name in out and m.family in out and m.paper[:40] in out


def test_default_and_all_methods():
  names = cli.default_methods()
  assert names[-1] == 'adamw'
  want = [
    m.name
    for m in catalog.METHODS
    if m.kind in ('transformation', 'extra_args')
  ]
  assert names[:-1] == want
  every = want + list(compare.BASELINES)
  # Old names (catalog.RENAMED) are accepted but are not part of "all".
  assert compare.valid_methods() == every + list(catalog.RENAMED)
  parser = cli.build_parser()
  assert cli._methods(parser, 'all') == every
  assert cli._methods(parser, 'adamw,all') == (
    ['adamw'] + [n for n in every if n != 'adamw']
  )
  for old, new in catalog.RENAMED.items():
    assert cli._methods(parser, f'{old},all').count(old) == 1
    assert new in cli._methods(parser, 'all')


def test_method_spec_uses_task_hyperparameters():
  for m in catalog.METHODS:
    if m.kind == 'extra_args':
      assert 'grad_fn' in cli.method_spec(m.name).needs
  lion = catalog.get('lion')
  assert compare.method_spec('lion').hyperparameters == dict(lion.defaults)
  assert compare.method_spec('lion', 'function').hyperparameters == dict(
    lion.test_kwargs
  )
  spec = compare.method_spec('adam', 'network', {'b1': 0.8})
  assert spec.source == 'optax' and spec.needs == ()
  assert spec.hyperparameters == {'learning_rate': 1e-3, 'b1': 0.8}
  assert compare.hyperparameter_names('adam')[:2] == ['learning_rate', 'b1']


def _compare(
  tmp, capsys, *extra, methods='lion,adamw', task='digits', steps='20'
):
  assert (
    cli.main(
      [
        'compare',
        '--task',
        task,
        '--methods',
        methods,
        '--steps',
        steps,
        '--no-progress',
        '--output',
        str(tmp),
        *extra,
      ]
    )
    == 0
  )
  return capsys.readouterr().out, json.loads((tmp / 'results.json').read_text())


def _header(out):
  return ' '.join(out.splitlines()[0].split())


def test_tiny_run_writes_results_and_is_deterministic(tmp_path, capsys):
  out, res = _compare(tmp_path / 'a', capsys)
  assert _header(out) == (
    'method train loss test acc ms/step state bytes grad evals/step'
  )
  for name in ('loss_vs_steps.png', 'loss_vs_time.png'):
    assert (tmp_path / 'a' / name).stat().st_size > 5_000
  assert not (tmp_path / 'a' / 'trajectories.png').exists()
  md = (tmp_path / 'a' / 'results.md').read_text()
  assert '| method | train loss | test acc | ms/step | state bytes |' in md
  assert '![train loss against step](loss_vs_steps.png)' in md
  assert (
    '`python -m optimflow compare --task digits --methods lion,adamw '
    f'--steps 20 --seeds 1 --output {tmp_path / "a"}`'
  ) in md
  assert '- `lion` (catalog): learning_rate=0.0003, weight_decay=0.01' in md
  assert res['task'] == 'digits' and res['steps'] == 20
  assert res['seeds'] == [0] and res['methods'] == ['lion', 'adamw']
  assert res['metric'] == {
    'name': 'test accuracy',
    'short': 'test acc',
    'higher_is_better': True,
  }
  assert res['machine']['cpu_count'] >= 1
  lion, adamw = res['results']
  for r in (lion, adamw):
    assert len(r['curves']['train_loss'][0]) == 20
    assert len(r['curves']['wall_s'][0]) == 20 and len(r['compile_s']) == 1
    assert 'step_time_s' not in r['curves']  # wall_s holds the times
    assert r['grad_evals_per_step'] == 1
    assert 0.0 < r['test_metric']['mean'] <= 1.0
    assert r['test_metric']['mean'] == pytest.approx(
      r['curves']['test_metric'][0][-1], rel=1e-5
    )  # stored: 6 digits
  # Lion keeps one moment, AdamW two (plus their int32 counters).
  assert adamw['opt_state_bytes'] - 4 == 2 * (lion['opt_state_bytes'] - 4)
  assert lion['source'] == 'catalog' and adamw['source'] == 'optax'

  _, again = _compare(tmp_path / 'b', capsys)
  assert compare.without_timing(again) == compare.without_timing(res)
  assert again['results'][0]['ms_per_step'] != {}


def test_set_overrides_reach_the_optimizer(tmp_path, capsys):
  _, base = _compare(tmp_path / 'a', capsys, methods='lion', steps='5')
  _, changed = _compare(
    tmp_path / 'b',
    capsys,
    '--set',
    'lion.learning_rate=3e-3',
    '--set',
    'lion.b1=0.5',
    methods='lion',
    steps='5',
  )
  hyper = changed['results'][0]['hyperparameters']
  assert hyper == {'learning_rate': 3e-3, 'weight_decay': 1e-2, 'b1': 0.5}
  assert changed['overrides'] == {'lion': {'learning_rate': 3e-3, 'b1': 0.5}}
  assert (
    changed['results'][0]['curves']['train_loss']
    != base['results'][0]['curves']['train_loss']
  )


def test_seeds_give_mean_and_std(tmp_path, capsys):
  out, res = _compare(tmp_path, capsys, '--seeds', '2', steps='5')
  acc = res['results'][0]['test_metric']
  assert len(acc['values']) == 2  # sample std (ddof=1) of the seeds
  assert acc['std'] == pytest.approx(np.std(acc['values'], ddof=1))
  assert acc['mean'] == pytest.approx(np.mean(acc['values']))
  assert '±' in out


def test_function_task_trajectories(tmp_path, capsys):
  out, res = _compare(
    tmp_path,
    capsys,
    '--seeds',
    '2',
    methods='lion,sam',
    task='rosenbrock',
    steps='30',
  )
  assert _header(out) == (
    'method train loss dist to opt ms/step state bytes grad evals/step'
  )
  assert (tmp_path / 'trajectories.png').stat().st_size > 10_000
  assert (
    '![trajectories on the contour (2-D functions)](trajectories.png)'
    in (tmp_path / 'results.md').read_text()
  )
  lion, sam = res['results']
  assert lion['hyperparameters'] == dict(catalog.get('lion').test_kwargs)
  assert sam['grad_evals_per_step'] == 2
  path0, path1 = (np.asarray(p) for p in lion['trajectories'])
  assert path0.shape == (31, 2)
  np.testing.assert_allclose(path0[0], [-1.5, 2.0])  # seed 0: canonical
  assert not np.allclose(path1[0], path0[0])  # seed 1: moved start
  problem = compare.get_task('rosenbrock').load()
  f = lambda x: float(problem.loss(np.asarray(x, np.float32)))
  # results.json stores paths and losses to 4 significant digits.
  np.testing.assert_allclose(
    lion['test_metric']['values'],
    [
      np.linalg.norm(p[-1] - np.asarray(problem.optimum))
      for p in (path0, path1)
    ],
    rtol=2e-3,
  )
  np.testing.assert_allclose(
    lion['train_loss']['values'][0], f(path0[-1]), rtol=2e-3
  )
  # The loss at step k is f(x_{k-1}).
  np.testing.assert_allclose(
    lion['curves']['train_loss'][0][:3], [f(x) for x in path0[:3]], rtol=2e-3
  )


def test_stored_results_thin_long_curves(tmp_path):
  from optimflow.lab import plotting

  res = compare.compare('rosenbrock', ['adam'], steps=30, progress=False)
  small = compare.storable(res, max_points=10)
  (r,), (full,) = small['results'], res['results']
  index = r['curves']['index']
  assert len(index) == 10 and index[0] == 1 and index[-1] == 30
  assert len(r['curves']['train_loss'][0]) == 10
  assert r['curves']['eval_steps'] == index
  traj = np.asarray(r['trajectories'][0])
  assert traj.shape == (11, 2)
  np.testing.assert_allclose(
    traj[1:], np.asarray(full['trajectories'][0])[index], rtol=1e-3
  )
  np.testing.assert_allclose(
    r['curves']['wall_s'][0][-1], full['curves']['wall_s'][0][-1], rtol=1e-3
  )
  assert r['train_loss'] == full['train_loss']  # summaries are not thinned
  assert compare.storable(res)['results'][0]['curves']['index'] == list(
    range(1, 31)
  )
  problem = compare.get_task(small['task']).load()
  for plot in (
    plotting.loss_vs_steps,
    plotting.loss_vs_time,
    lambda r, p: plotting.trajectories(r, p, problem),
  ):  # plots read thinned results too
    plot(small, tmp_path / 'p.png')
    assert (tmp_path / 'p.png').stat().st_size > 5_000


def test_tune_lr_keeps_the_best_learning_rate():
  res = compare.compare(
    'rosenbrock', ['sgd'], steps=40, tune_lr=True, progress=False
  )
  (r,) = res['results']
  search = r['lr_search']
  base = compare.BASELINES['sgd'].function['learning_rate']
  assert search['learning_rates'] == pytest.approx(
    [base * f for f in compare.LR_FACTORS], rel=1e-2
  )
  best = int(np.argmin(search['final_loss']))
  assert search['chosen'] == search['learning_rates'][best]
  assert r['hyperparameters'] == {'learning_rate': search['chosen']}
  assert r['train_loss']['mean'] == search['final_loss'][best]
  # The kept run is the run of that learning rate.
  again = compare.compare(
    'rosenbrock',
    ['sgd'],
    steps=40,
    progress=False,
    overrides={'sgd': {'learning_rate': search['chosen']}},
  )
  assert again['results'][0]['train_loss'] == r['train_loss']
  assert 'best of 9' in compare.results_markdown(res)


def test_function_task_is_deterministic():
  a, b = (
    compare.compare(
      'rastrigin', ['adam', 'auon'], steps=15, seeds=2, progress=False
    )
    for _ in range(2)
  )
  assert compare.without_timing(a) == compare.without_timing(b)


@pytest.mark.parametrize(
  'task, metric', [('digits-cnn', 'test acc'), ('charlm', 'valid bpc')]
)
def test_other_network_tasks(tmp_path, capsys, monkeypatch, task, metric):
  if task == 'charlm':
    pytest.importorskip('optimflow.lab.tasks.charlm')
  monkeypatch.setitem(compare.CHARLM, 'max_chars', 20_000)
  monkeypatch.setitem(compare.CHARLM, 'd_model', 16)
  out, res = _compare(
    tmp_path,
    capsys,
    '--batch-size',
    '16',
    methods='adamw',
    task=task,
    steps='3',
  )
  assert _header(out).split()[3:5] == metric.split()
  r = res['results'][0]
  assert res['batch_size'] == 16 and len(r['curves']['train_loss'][0]) == 3
  if task == 'charlm':  # bits per character: nats / log 2, near log2(96)
    assert 4.0 < r['test_metric']['mean'] < 8.0
    assert res['metric']['higher_is_better'] is False


def test_extra_args_methods_get_grad_fn(tmp_path, capsys, monkeypatch):
  import jax
  import optax

  def ascent_sgd(learning_rate, rho):
    """SAM-like: the gradient at params + rho g / ||g||, then SGD."""

    def update(grads, state, params=None, *, grad_fn, **extra):
      del extra
      norm = optax.tree.norm(grads)
      moved = jax.tree.map(
        lambda p, g: p + rho * g / (norm + 1e-12), params, grads
      )
      return grad_fn(moved), state

    ascent = optax.GradientTransformationExtraArgs(
      lambda params: optax.EmptyState(), update
    )
    return optax.chain(ascent, optax.sgd(learning_rate))

  fake = dataclasses.replace(
    catalog.METHODS[0],
    name='fake_sam',
    factory=ascent_sgd,
    defaults=dict(learning_rate=0.1, rho=0.05),
    kind='extra_args',
    needs=('grad_fn',),
  )
  monkeypatch.setattr(catalog, 'METHODS', catalog.METHODS + (fake,))
  monkeypatch.setitem(catalog._BY_NAME, 'fake_sam', fake)
  _, res = _compare(tmp_path, capsys, methods='fake_sam', steps='10')
  assert res['results'][0]['grad_evals_per_step'] == 2
  assert res['results'][0]['hyperparameters'] == {
    'learning_rate': 0.1,
    'rho': 0.05,
  }


def test_readme_is_no_user_command(capsys):
  # Regenerating README/docs is tools/update_readme.py's job (tests/test_report.py).
  _fails(capsys, ['readme', '--check'], 'invalid choice', "'readme'")


def test_batch_size_up_to_the_training_set_is_accepted(tmp_path, capsys):
  # The bound is the training set itself (1347 digits), not one less.
  assert (
    cli.main(
      [
        'compare',
        '--methods',
        'sgd',
        '--steps',
        '1',
        '--batch-size',
        '1347',
        '--no-progress',
        '--output',
        str(tmp_path),
      ]
    )
    == 0
  )
  assert '| sgd |' in (tmp_path / 'results.md').read_text()


# flax is blocked the way an environment without it fails: every import of
# flax or a submodule raises ModuleNotFoundError.
_NO_FLAX = """
import importlib.abc, runpy, sys

class _NoFlax(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name == 'flax' or name.startswith('flax.'):
      raise ModuleNotFoundError(f'No module named {name!r}', name=name)
    return None

sys.meta_path.insert(0, _NoFlax())
sys.argv = ['optimflow', *sys.argv[1:]]
try:
  runpy.run_module('optimflow', run_name='__main__', alter_sys=True)
finally:
  print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] == 'flax'),
        file=sys.stderr)
"""


def _without_flax(*argv):
  return subprocess.run(
    [sys.executable, '-c', _NO_FLAX, *argv],
    cwd=tempfile.gettempdir(),
    capture_output=True,
    text=True,
    timeout=180,
    check=False,
  )


def test_list_needs_no_flax():
  proc = _without_flax('list')
  assert proc.returncode == 0, proc.stderr
  assert 'Traceback' not in proc.stderr
  assert 'LOADED []' in proc.stderr
  assert proc.stdout.splitlines()[0].split() == [
    'name',
    'family',
    'kind',
    'paper',
  ]
  for m in catalog.METHODS:
    assert m.name in proc.stdout


def test_compare_without_flax_says_what_to_install():
  proc = _without_flax('compare', '--methods', 'lion', '--steps', '1')
  assert proc.returncode == 2
  assert 'Traceback' not in proc.stderr
  assert 'compare needs flax' in proc.stderr
  assert 'pip install "optimflow[examples]"' in proc.stderr
