"""Which operating point a finding's threshold is set at (``hyperct evaluate --write-thresholds``).

Youden's J where the calibration data show the model detecting the finding: an AUC of at least
``MIN_USEFUL_AUC`` and its 95 % CI above 0.5 (``hyperct.training.metrics.discriminates``); otherwise
the lowest threshold with specificity >= ``HIGH_SPECIFICITY``, so that a finding the model cannot
tell is rarely called (marked "*" in every export: ``hyperct.results.HIGH_SPECIFICITY_NOTE``).
Below ``MIN_USEFUL_AUC`` a score's discrimination is "poor" (0.7-0.8 "acceptable": Hosmer, Lemeshow
& Sturdivant, Applied Logistic Regression, 3rd ed., 2013, ch. 5), and Youden's J on such a score
calls a large share of the scans. No imports: the CLI reads these when it builds its parser.
"""

HIGH_SPECIFICITY = 0.99
MIN_USEFUL_AUC = 0.70
