"""Synthetic data for the demo, the tests and the benchmarks; none of it is a pipeline stage.

- ``demo``    the deterministic demo dataset in the MIMIC layout (``python -m synthetic.demo OUT_DIR``), which
              the pipeline ingests when no dataset is configured
- ``stores``  a synthetic lake (feature stores, ``mentions``, the entity index and ``mention_candidates``)
              written by the pipeline's own writers, for training and evaluation at any size

Imports flow one way: ``synthetic`` -> ``pipeline`` -> ``model``; the pipeline never imports this package.
"""
