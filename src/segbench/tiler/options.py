"""How scenes are cut into windows and combined: the options ``segment`` and ``bench`` share.

Defined once here (with their command-line help, :mod:`segbench.argfields`);
:class:`segbench.workflow.SegmentOptions` and
:class:`segbench.bench.options.BenchOptions` extend :class:`TilingOptions`, so
``--overlap``, ``--blend`` and ``--batch`` have one default each, in the
command line, the library and a study's ``[bench]`` table alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from segbench.argfields import option, positive_or_auto
from segbench.errors import UsageError
from segbench.tiler.blend import BLENDS

#: ``batch``'s value for the fastest batch size, measured (:func:`segbench.tiler.auto_batch`)
AUTO = "auto"


@dataclass(frozen=True)
class TilingOptions:
    overlap: int | None = option(
        None, help="overlap between windows in pixels", default_help="the model's evaluation stride "
        "where its spec records one, else a quarter tile")
    blend: str = option("cosine", help="how overlapping windows are combined", choices=BLENDS)
    batch: int | str = option(
        AUTO, parse=positive_or_auto,
        help="windows per inference call, or 'auto': the fastest of 1, 2, 4, 8, 16 in a short sweep on "
             "the scene's tiles, kept beside the engine for this machine")

    def __post_init__(self) -> None:
        if self.blend not in BLENDS:
            raise UsageError(f"blend must be one of {', '.join(BLENDS)}; got {self.blend!r}.")
        if self.batch != AUTO and (isinstance(self.batch, bool) or not isinstance(self.batch, int)
                                   or self.batch < 1):
            raise UsageError(f"batch must be a positive integer or 'auto'; got {self.batch!r}.")
        if self.overlap is not None and (isinstance(self.overlap, bool) or not isinstance(self.overlap, int)
                                         or self.overlap < 0):
            raise UsageError(f"overlap must be an integer of at least 0; got {self.overlap!r}.")
