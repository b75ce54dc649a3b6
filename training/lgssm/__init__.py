"""The toy experiment of paper Sec. 2.2 (Fig. 2): RSSM bound vs SSM bound on a 4-D LGSSM.

Run ``python -m training.lgssm --help``. Modules, one job each:
``model`` (ground truth and data), ``dense_kalman`` (full-covariance filter / smoother),
``bounds`` (Eq. 3 / Eq. 4), ``inference`` (the q's), ``experiment`` (train, evaluate,
bootstrap, claims), ``report`` (table, JSON, figure).
"""
