"""Benchmarks of hessnb; not part of the installed package.

Run each from the repository root:

- ``python -m bench.cpu`` (``--quick`` for seconds): HVP / gradient, Lanczos overhead,
  batched probes, accuracy against an exact spectrum and other libraries, on the digits.
- ``python -m bench.gpu`` (``--tiny`` on a CPU): HVP against training throughput at
  ImageNet scale, Lanczos seconds per step, projected hours; ``--density-effect`` for the
  effect of reduced-precision HVPs on the density.
- ``python -m bench.compare_libraries``: back-to-back SLQ wall times of hessnb,
  hessian-eigenthings and curvlinops.

:mod:`bench.common` holds what they share; :mod:`bench.accuracy` and
:mod:`bench.libraries` the CPU benchmark's accuracy rows and third-party adapters.
Figures and the commands that produced them are in ``BENCHMARKS.md``.
"""
