"""Whole-scene segmentation: window plan, blending, streaming accumulation, threaded pipeline."""

from segbench.tiler.pipeline import SegmentResult, StageTimes, segment
from segbench.tiler.scenes import auto_batch, expand_scenes, segment_many
from segbench.tiler.windows import Window, plan_windows, stride_for

__all__ = ["SegmentResult", "StageTimes", "Window", "auto_batch", "expand_scenes", "plan_windows", "segment",
           "segment_many", "stride_for"]
