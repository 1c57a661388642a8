"""Risk models with a scikit-learn-like interface, on NumPy or CuPy arrays.

    from hpcstudy.models import CoxPH, Logistic, Poisson, KaplanMeier, AalenJohansen

Every model also fits over partitions (``fit_partitions``) from sums that add across them.
"""

from .base import ConvergenceWarning, ModelError
from .cox import CoxPH
from .glm import Logistic, Poisson
from .partitions import DaskPartitions, LocalPartitions
from .survival import AalenJohansen, KaplanMeier

__all__ = ["CoxPH", "Logistic", "Poisson", "KaplanMeier", "AalenJohansen", "ModelError",
           "ConvergenceWarning", "LocalPartitions", "DaskPartitions"]
