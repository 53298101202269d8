"""What a network costs: parameters and GFLOPs of one forward pass at a tile size."""

from __future__ import annotations


def model_cost(model, bands: int, tile: int, flops: bool = True) -> tuple[int, float | None]:
    """``(parameters, GFLOPs)`` of an mmseg segmentor.

    Parameters count every weight, auxiliary heads included, as mmseg's
    builder reports them. GFLOPs are counted by mmengine's FlopAnalyzer on the
    decode path (backbone, neck, decode head) at ``tile`` x ``tile``, one
    multiply-add counted once, as mmseg's ``get_flops`` tool does.
    """
    import torch

    params = sum(p.numel() for p in model.parameters())
    if not flops:
        return params, None
    from mmengine.analysis import FlopAnalyzer

    class Forward(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m._forward(x)

    with torch.inference_mode():
        analyzer = FlopAnalyzer(Forward().eval(), torch.zeros(1, bands, tile, tile))
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return params, analyzer.total() / 1e9
