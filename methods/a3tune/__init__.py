"""A³TUNE: automatic attention alignment tuning (Chang et al.) — weak labels, A³MoE, head selection,
alignment loss. The method class is :class:`~medbench.methods.a3tune.method.A3Tune`."""

from medbench.methods.a3tune.method import A3Tune
from medbench.methods.a3tune.params import A3TuneParams

__all__ = ["A3Tune", "A3TuneParams"]
