"""The study tools, built on top of the compiler: data, training, robustness, Grad-CAM,
effective and theoretical receptive fields, shift consistency, summaries and figures.

* :mod:`~reverso.study.data` (+ ``images``, ``local_datasets``): built-in and local datasets;
* :mod:`~reverso.study.train`: seeded training runs; :mod:`~reverso.study.robustness`: attacks;
* :mod:`~reverso.study.gradcam`, :mod:`~reverso.study.erf`, :mod:`~reverso.study.receptive`,
  :mod:`~reverso.study.shift`: what a network looks at, and how far;
* :mod:`~reverso.study.summary`: stage tables; :mod:`~reverso.study.plotting`: the figure style.
"""

from reverso.lazy import submodules

__getattr__ = submodules(__name__)
