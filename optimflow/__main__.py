"""``python -m optimflow``: see :mod:`optimflow.lab.cli`."""

from optimflow.lab.cli import main

if __name__ == '__main__':
  raise SystemExit(main())
