"""``python -m optimflow``: see :mod:`optimflow.cli`."""

from optimflow.cli import main

if __name__ == '__main__':
  raise SystemExit(main())
