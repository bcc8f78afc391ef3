"""A convolutional spatial prior beside the plain ViR trunk (ViT-Adapter's idea, without its
deformable-attention injector/extractor).

Patch embedding turns every 8x8 or 16x16 patch into one token, so pixel-level edges only reach
a plain backbone's maps through what the blocks learn to keep. ViT-Adapter adds a small conv
stem on the image (its "spatial prior module") for that detail. Ours is a ResNet-like stem
giving one stride-4 map that the backbone returns in front of its own maps; a standard FPN
then fuses the two (top-down ViR semantics into stride-4 detail). It is new, randomly
initialised weight that never comes from a ViR/ViT checkpoint.
"""
import torch.nn as nn
from mmcv.cnn import ConvModule

STRIDE = 4


class SpatialPriorStem(nn.Sequential):
    """Image (B, 3, H, W) -> (B, channels, ceil(H/4), ceil(W/4)): three 3x3 convs, a max-pool."""

    def __init__(self, in_channels=3, channels=64, norm_cfg=None):
        norm_cfg = norm_cfg or dict(type='BN', requires_grad=True)
        half = channels // 2
        super().__init__(
            ConvModule(in_channels, half, 3, stride=2, padding=1, norm_cfg=norm_cfg),
            ConvModule(half, half, 3, padding=1, norm_cfg=norm_cfg),
            ConvModule(half, channels, 3, padding=1, norm_cfg=norm_cfg),
            nn.MaxPool2d(3, stride=2, padding=1))
