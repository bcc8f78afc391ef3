"""A convolutional spatial prior beside the plain ViR trunk (ViT-Adapter's idea, without its
deformable-attention injector/extractor).

Patch embedding turns every 8x8 or 16x16 patch into one token, so pixel-level edges only reach
a plain backbone's maps through what the blocks learn to keep. ViT-Adapter adds a small conv
stem on the image (its "spatial prior module") for that detail. Ours is a ResNet-like stem
giving a stride-4 map, optionally followed by stride-2 conv stages (stride 8, 16, ...), whose
maps the backbone returns in front of its own; a standard FPN then fuses them (top-down ViR
semantics into stride-4/8 detail). It is new, randomly initialised weight that never comes
from a ViR/ViT checkpoint.

With patch 8 one stage (stride 4) lines up with the ViR map (stride 8); with patch 16 two
stages give strides 4 and 8 in front of the ViR's 16 (and its pooled 32).
"""
import torch.nn as nn
from mmcv.cnn import ConvModule

STRIDE = 4  # of the stem (the first map)


class SpatialPriorStem(nn.Sequential):
    """Image (B, 3, H, W) -> a tuple of maps at strides 4, 8, ... (one per stage).

    Stage 1 is three 3x3 convs and a max-pool (channels at stride 4, ceil(H/4) x ceil(W/4));
    every further stage is one 3x3 stride-2 conv that doubles the channels (ViT-Adapter's
    spatial prior module does the same). Sub-module names are those of the one-stage stem, so
    its checkpoints still load.
    """

    def __init__(self, in_channels=3, channels=64, norm_cfg=None, num_stages=1):
        if num_stages < 1:
            raise ValueError(f'SpatialPriorStem needs num_stages >= 1, got {num_stages}')
        norm_cfg = norm_cfg or dict(type='BN', requires_grad=True)
        half = channels // 2
        layers = [
            ConvModule(in_channels, half, 3, stride=2, padding=1, norm_cfg=norm_cfg),
            ConvModule(half, half, 3, padding=1, norm_cfg=norm_cfg),
            ConvModule(half, channels, 3, padding=1, norm_cfg=norm_cfg),
            nn.MaxPool2d(3, stride=2, padding=1)]
        widths = [channels * 2 ** i for i in range(num_stages)]
        for width_in, width in zip(widths, widths[1:]):
            layers.append(ConvModule(width_in, width, 3, stride=2, padding=1,
                                     norm_cfg=norm_cfg))
        super().__init__(*layers)
        self.out_channels = widths
        self.out_strides = [STRIDE * 2 ** i for i in range(num_stages)]

    def forward(self, x):
        outs = []
        for index, layer in enumerate(self):
            x = layer(x)
            if index >= 3:  # after the stem's max-pool, and after every further stage
                outs.append(x)
        return tuple(outs)
