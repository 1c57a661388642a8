"""Array kernels of hpcstudy, for NumPy or CuPy arrays (imported as ``hpcstudy_kernels``).

They know nothing of studies, Dask or Slurm: functions of arrays, in the namespace of their
inputs. Modules: ``linkage`` (joins on sorted keys), ``windows`` (per-person events in a window),
``followup`` (exit and cause from competing ends), ``cox``, ``glm``, ``survival`` (sufficient
statistics of the models, which add across partitions), ``robust`` (clustered sandwich sums).
"""

from . import cox, followup, glm, linkage, robust, survival, windows
from ._namespace import array_namespace, is_cupy, to_numpy

__all__ = ["array_namespace", "is_cupy", "to_numpy", "cox", "followup", "glm", "linkage", "robust",
           "survival", "windows"]
