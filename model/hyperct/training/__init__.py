"""Training and evaluation of HyperCT: datasets, preprocessing cache, trainer, metrics, reports.

Entry points: ``hyperct train --config FILE`` (``hyperct.training.trainer.train``) and
``hyperct evaluate --model DIR --data SPEC --out DIR`` (``hyperct.training.evaluate.evaluate``).
Heavy modules are imported lazily; importing this package is cheap.
"""
