"""Tests of the command line (python -m optimflow)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from optimflow import catalog
from optimflow import cli

ROOT = Path(__file__).resolve().parents[1]


def _fails(capsys, argv, *expected):
  with pytest.raises(SystemExit) as exc:
    cli.main(argv)
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1, err  # one line
  for text in expected:
    assert text in err
  return err


@pytest.mark.parametrize('argv, expected', [
    (['compare', '--task', 'cifar'], ("unknown task 'cifar'", 'digits')),
    (['compare', '--methods', 'lion,nope'],
     ('unknown method(s) nope', 'valid methods:', 'lion_kappa', 'adamw')),
    (['compare', '--methods', ' , '], ('--methods is empty',)),
    (['compare', '--steps', '0'], ('--steps', 'positive integer, got 0')),
    (['compare', '--steps', 'ten'], ('--steps', "got 'ten'")),
    (['compare', '--seeds', '-2'], ('--seeds', 'positive integer, got -2')),
    (['compare', '--batch-size', '0'], ('--batch-size',)),
    (['frobnicate'], ('invalid choice',)),
    ([], ('required',)),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, expected):
  _fails(capsys, argv, *expected)


def test_unwritable_output_folder(capsys, tmp_path):
  blocker = tmp_path / 'file.txt'
  blocker.write_text('not a folder')
  _fails(capsys, ['compare', '--methods', 'lion', '--steps', '1',
                  '--output', str(blocker / 'sub')],
         'cannot write to output folder', 'file.txt')


def test_module_entry_point_has_no_traceback():
  proc = subprocess.run(
      [sys.executable, '-m', 'optimflow', 'compare', '--methods', 'bogus'],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2
  assert 'Traceback' not in proc.stderr
  assert proc.stderr.strip().startswith('optimflow compare: error: unknown')


def test_list_prints_catalog(capsys):
  assert cli.main(['list']) == 0
  out = capsys.readouterr().out
  for m in catalog.METHODS:
    assert m.name in out and m.family in out


def test_default_methods_are_trainable_catalog_entries_and_adamw():
  names = cli.default_methods()
  assert names[-1] == 'adamw'
  want = [m.name for m in catalog.METHODS
          if m.kind in ('transformation', 'extra_args')]
  assert names[:-1] == want


def test_method_spec():
  for m in catalog.METHODS:
    if m.kind == 'extra_args':
      assert 'grad_fn' in cli.method_spec(m.name).needs
  spec = cli.method_spec('adam')
  assert spec.source == 'optax' and spec.needs == ()
  assert spec.hyperparameters == {'learning_rate': 1e-3}


def _compare(tmp, capsys, *extra):
  assert cli.main(['compare', '--task', 'digits', '--methods', 'lion,adamw',
                   '--steps', '20', '--no-progress', '--output', str(tmp),
                   *extra]) == 0
  return capsys.readouterr().out, json.loads((tmp / 'results.json').read_text())


def _without_timing(results):
  for r in results['results']:
    del r['ms_per_step']
  return results


def test_tiny_run_writes_results_and_is_deterministic(tmp_path, capsys):
  out, res = _compare(tmp_path / 'a', capsys)
  header = out.splitlines()[0].split()
  assert ' '.join(header) == ('method train loss test acc ms/step state bytes '
                              'grad evals/step')
  assert (tmp_path / 'a' / 'curves.png').stat().st_size > 5_000
  assert res['task'] == 'digits' and res['steps'] == 20
  assert res['seeds'] == [0] and res['methods'] == ['lion', 'adamw']
  lion, adamw = res['results']
  for r in (lion, adamw):
    assert set(r) >= {'method', 'train_loss', 'test_accuracy', 'ms_per_step',
                      'opt_state_bytes', 'grad_evals_per_step', 'curves'}
    assert len(r['curves']['train_loss'][0]) == 20
    assert r['grad_evals_per_step'] == 1
    assert 0.0 < r['test_accuracy']['mean'] <= 1.0
  # Lion keeps one moment, AdamW two (plus their int32 counters).
  assert adamw['opt_state_bytes'] - 4 == 2 * (lion['opt_state_bytes'] - 4)
  assert lion['source'] == 'catalog' and adamw['source'] == 'optax'

  _, again = _compare(tmp_path / 'b', capsys)
  assert _without_timing(again) == _without_timing(res)


def test_seeds_give_mean_and_std(tmp_path, capsys):
  out, res = _compare(tmp_path, capsys, '--seeds', '2', '--steps', '5')
  acc = res['results'][0]['test_accuracy']
  assert len(acc['values']) == 2 and acc['std'] >= 0
  assert '±' in out


def test_extra_args_methods_get_grad_fn(tmp_path, capsys, monkeypatch):
  import dataclasses

  import jax
  import optax

  def ascent_sgd(learning_rate, rho):
    """SAM-like: the gradient at params + rho g / ||g||, then SGD."""

    def update(grads, state, params=None, *, grad_fn, **extra):
      del extra
      norm = optax.tree.norm(grads)
      moved = jax.tree.map(lambda p, g: p + rho * g / (norm + 1e-12),
                           params, grads)
      return grad_fn(moved), state

    ascent = optax.GradientTransformationExtraArgs(
        lambda params: optax.EmptyState(), update)
    return optax.chain(ascent, optax.sgd(learning_rate))

  fake = dataclasses.replace(
      catalog.METHODS[0], name='fake_sam', factory=ascent_sgd,
      defaults=dict(learning_rate=0.1, rho=0.05), kind='extra_args',
      needs=('grad_fn',))
  monkeypatch.setattr(catalog, 'METHODS', catalog.METHODS + (fake,))
  monkeypatch.setitem(catalog._BY_NAME, 'fake_sam', fake)
  assert cli.main(['compare', '--methods', 'fake_sam', '--steps', '10',
                   '--no-progress', '--output', str(tmp_path)]) == 0
  res = json.loads((tmp_path / 'results.json').read_text())
  assert res['results'][0]['grad_evals_per_step'] == 2
  assert res['results'][0]['hyperparameters'] == {'learning_rate': 0.1,
                                                  'rho': 0.05}
