"""segbench: which engine should run this segmentation model on this hardware, and at what cost.

The flow is data -> train -> export -> build -> segment -> bench; one
:class:`~segbench.spec.ModelSpec` travels with every artifact.
"""

from segbench.errors import SegbenchError
from segbench.spec import BuildRecord, ModelSpec

__version__ = "0.1.0"
__all__ = ["BuildRecord", "ModelSpec", "SegbenchError", "__version__"]
