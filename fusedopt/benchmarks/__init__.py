"""``fusedopt.benchmarks`` in a source checkout: the top-level ``benchmarks/`` folder.

setup.py installs ``benchmarks/`` as this package (its ``package_dir`` mapping), so an installed
fusedopt never contains this file. In a source checkout, ``python -m fusedopt ...`` run from the
repository root imports ``fusedopt`` from the tree itself, where the mapping does not exist; this
file points the package at the same folder, so that ``python -m fusedopt bench`` and ``from
fusedopt.benchmarks import bench`` work there too, and ``python -m benchmarks.gpu_bench`` keeps
working on the same files.
"""

import os

__path__ = [os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "benchmarks")]
