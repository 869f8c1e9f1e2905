"""The lab: the application that exercises the library.

``python -m optimflow`` (:mod:`optimflow.lab.cli`): ``compare`` methods side by
side on built-in tasks (:mod:`~optimflow.lab.runs`, :mod:`~optimflow.lab.tasks`),
``bench`` step time and memory against optax, PyTorch peers and hardware
floors (:mod:`~optimflow.lab.bench`), ``list`` the catalog. The paper examples
live in :mod:`optimflow.lab.examples` (``python -m optimflow.lab.examples.swan``).

The lab imports the library; the library never imports the lab.
"""
