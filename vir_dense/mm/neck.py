"""Turning plain stride-16 ViR maps into a multi-scale pyramid (strides 4, 8, 16, 32[, 64]).

`rescale_layer` is the one place that builds the x4 / x2 / x1 / x0.5 resampling; it serves the
backbone's intermediate-tap pyramid (mmseg/BEiT style) and `SimpleFeaturePyramid` (ViTDet).
LayerNorm2d instead of BatchNorm: per-GPU batches of 1-2 images, and no SyncBN on CPU.
"""
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from timm.layers import LayerNorm2d


def rescale_layer(channels, scale):
    """A module resizing an NCHW map by `scale` in {4, 2, 1, 0.5}, keeping `channels`."""
    if scale == 4:
        return nn.Sequential(nn.ConvTranspose2d(channels, channels, 2, 2), LayerNorm2d(channels),
                             nn.GELU(), nn.ConvTranspose2d(channels, channels, 2, 2))
    if scale == 2:
        return nn.ConvTranspose2d(channels, channels, 2, 2)
    if scale == 1:
        return nn.Identity()
    if scale == 0.5:
        return nn.MaxPool2d(2, 2, ceil_mode=True)  # odd grids keep their last row/column
    raise ValueError(f'unsupported scale factor {scale}; use 4, 2, 1 or 0.5')


class SimpleFeaturePyramid(BaseModule):
    """ViTDet's simple feature pyramid: one stride-16 map -> maps at strides 4, 8, 16, 32.

    Each level: rescale, 1x1 conv + LN, 3x3 conv + LN to `out_channels`. With num_outs=5 a
    stride-64 level is added by max-pooling the last one (for RPN anchors of size 512).
    """

    def __init__(self, in_channels, out_channels=256, scale_factors=(4.0, 2.0, 1.0, 0.5),
                 num_outs=5, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if isinstance(in_channels, (list, tuple)):
            if len(in_channels) != 1:
                raise ValueError('SimpleFeaturePyramid takes one input map (the backbone\'s '
                                 f'last); got in_channels={in_channels}. Use out_indices=(-1,)')
            in_channels = in_channels[0]
        if num_outs < len(scale_factors):
            raise ValueError(f'num_outs={num_outs} < {len(scale_factors)} scale factors')
        self.num_outs = num_outs
        self.levels = nn.ModuleList([
            nn.Sequential(rescale_layer(in_channels, scale),
                          nn.Conv2d(in_channels, out_channels, 1, bias=False),
                          LayerNorm2d(out_channels),
                          nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                          LayerNorm2d(out_channels))
            for scale in scale_factors])

    def forward(self, inputs):
        x = inputs[-1] if isinstance(inputs, (list, tuple)) else inputs
        outs = [level(x) for level in self.levels]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)
