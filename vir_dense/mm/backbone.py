"""ViR as an OpenMMLab backbone (registered as `ViR` in mmdet's and mmseg's MODELS).

The same trunk as the timm models (vir_dense.models.vir.ViRTrunk: same blocks, same parameter
names), plus what dense prediction needs: any input size (padded to the patch size, outputs
cropped back), intermediate taps at `out_indices`, an optional multi-scale pyramid, frozen
stages, gradient checkpointing, and pretrained import that reports what it loaded.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from vir_dense.models.archs import ARCHS
from vir_dense.models.vir import ViRTrunk, run_blocks
from vir_dense.ops.retention import DEFAULT_CHUNK, mask_spec

from .neck import rescale_layer
from .spatial_prior import SpatialPriorStem

PYRAMIDS = ('taps', None)
TAP_SCALES = (4, 2, 1, 0.5)  # x4, x2, x1, x0.5 of the stride-16 maps: strides 4, 8, 16, 32


def _arch_settings(arch):
    if isinstance(arch, str):  # a size of the models' table, in mmpretrain's key names
        if arch not in ARCHS:
            raise ValueError(f'unknown ViR arch {arch!r}; choose one of {sorted(ARCHS)} '
                             'or pass a dict(embed_dims=..., num_layers=..., num_heads=...)')
        size = ARCHS[arch]
        return dict(embed_dims=size.embed_dim, num_layers=size.depth, num_heads=size.num_heads)
    missing = {'embed_dims', 'num_layers', 'num_heads'} - set(arch)
    if missing:
        raise ValueError(f'arch dict lacks {sorted(missing)}')
    return dict(arch)


class ViR(ViRTrunk, BaseModule):
    """Vision Retention backbone giving NCHW feature maps.

    Args:
        arch: 'tiny' | 'small' | 'base' | 'large' or dict(embed_dims, num_layers, num_heads).
        patch_size: patch (and stride) of the patch embedding.
        img_size: the pretraining input size; the position embedding is stored for that grid
            and resized bicubically to the grid of each input.
        out_indices: blocks whose outputs are returned (negative indices count from the end).
        pyramid: 'taps' rescales the four taps x4/x2/x1/x0.5 to strides 4/8/16/32 (mmseg
            BEiT/MAE style, used by the UperNet configs); None returns the stride-16 maps as
            they are (for the SimpleFeaturePyramid neck, used by the Mask R-CNN configs).
        mask: 'causal_1d' | 'causal_2d' | 'bidirectional_1d' | 'bidirectional_2d'.
        retention_mode: 'auto' | 'parallel' | 'chunkwise' | 'recurrent' (same outputs;
            chunkwise and recurrent keep memory linear in the number of tokens; 'auto' runs
            parallel up to 2048 tokens, else chunkwise).
        chunk_size: cells per tile in chunkwise mode (2D masks: about sqrt(chunk_size) square).
        normalize_retention: divide each token's retention output by its decay-mask row sum
            (a decay-weighted mean instead of a sum; not in the paper). Without it, outputs
            scale with the token count (~1000x the input at 20x20 tokens in block 0 of a
            random-init model), which slows training from scratch and shifts activations
            between training and high-resolution inference.
        decay_exponents: (first, last): 1 - gamma runs log-uniformly from 2^-first (head 0)
            to 2^-last (last head). ViR's (5, 9) is nearly global on dense grids; (1, 5) adds
            local heads (gamma 0.5 ... 0.97).
        with_cls_token: run the class token through the blocks. None follows the mask: under a
            causal mask no patch sees the (last) class token, so it is dropped for free; under a
            bidirectional mask every patch sees it, so it is kept as in pretraining.
        final_norm: apply the trunk's final LayerNorm to the tap of the last block.
        with_cp: gradient checkpointing of each block while training.
        frozen_stages: -1 trains everything; 0 freezes the embeddings; k >= 1 also blocks 0..k-1.
        spatial_prior: None, or dict(channels=64, norm_cfg=...) to add a conv stem on the
            image (vir_dense.mm.spatial_prior) whose stride-4 map is returned first, in front
            of the ViR maps (feed them to an FPN). dict(channels=64, num_stages=2) adds a
            stride-2 conv stage: maps at strides 4 and 8 (for patch 16).
        extra_pool: also return a stride-2 max-pool of the last ViR map (stride 2 x patch,
            ViTDet's 0.5 level), so that patch 16 gives strides 16 and 32 for an FPN.
        retention_memory_budget: bytes one chunkwise retention call may hold at once (None: no
            limit). The operator then runs in head groups and tile slices: same outputs, more
            ops; 'auto' takes the parallel form only where its scores fit. E.g. 128 * 2**20
            holds a ViR-S call at 2048² to ~110 MiB instead of ~270 (docs/benchmarks.md).
        init_cfg: dict(type='Pretrained', checkpoint=PATH or 'timm/<model>',
            allow_partial=False) imports ViR, timm ViT/DeiT or mmdet/mmseg checkpoints
            (vir_dense.models.convert, loaded by vir_dense.mm.checkpoint), with a report of
            what was loaded.
    """

    def __init__(self, arch='small', patch_size=16, img_size=224, in_channels=3,
                 out_indices=(3, 5, 7, 11), pyramid='taps', mask='bidirectional_2d',
                 retention_mode='auto', chunk_size=DEFAULT_CHUNK, normalize_retention=False,
                 decay_exponents=(5.0, 9.0), drop_path_rate=0.1, init_values=1e-5,
                 with_cls_token=None, final_norm=True, with_cp=False,
                 frozen_stages=-1, spatial_prior=None, extra_pool=False,
                 retention_memory_budget=None, init_cfg=None):
        settings = _arch_settings(arch)
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_channels,
                         embed_dim=settings['embed_dims'], depth=settings['num_layers'],
                         num_heads=settings['num_heads'], init_values=init_values,
                         drop_path_rate=drop_path_rate, mask=mask,
                         retention_mode=retention_mode, chunk_size=chunk_size,
                         normalize_retention=normalize_retention,
                         decay_exponents=decay_exponents, dynamic_img_size=True,
                         retention_memory_budget=retention_memory_budget)
        self.init_cfg = init_cfg
        num_layers = settings['num_layers']
        self.out_indices = tuple(i % num_layers for i in out_indices)
        if any(not -num_layers <= i < num_layers for i in out_indices):
            raise ValueError(f'out_indices {out_indices} out of range for {num_layers} blocks')
        if pyramid not in PYRAMIDS:
            raise ValueError(f'unknown pyramid {pyramid!r}; choose one of {PYRAMIDS}')
        if pyramid == 'taps' and len(self.out_indices) != len(TAP_SCALES):
            raise ValueError(f"pyramid='taps' needs 4 out_indices, got {out_indices}")
        self.pyramid = pyramid
        self.patch_size = patch_size
        self.in_channels = in_channels
        causal = mask_spec(mask).causal
        self.with_cls_token = (not causal) if with_cls_token is None else with_cls_token
        self.final_norm = final_norm
        self.with_cp = with_cp
        self.frozen_stages = frozen_stages
        if pyramid == 'taps':
            self.rescales = nn.ModuleList(
                [rescale_layer(self.embed_dim, scale) for scale in TAP_SCALES])
        self.out_strides = tuple(
            int(patch_size / scale) for scale in TAP_SCALES) if pyramid else (
            (patch_size,) * len(self.out_indices))
        self.extra_pool = extra_pool
        if extra_pool:
            if pyramid is not None:
                raise ValueError('extra_pool=True pools the last single-scale ViR map; it needs '
                                 "pyramid=None (pyramid='taps' already gives 2 x patch)")
            self.out_strides += (2 * patch_size,)
        self.spatial_prior = None
        if spatial_prior is not None:
            self.spatial_prior = SpatialPriorStem(in_channels, **spatial_prior)
            self.out_strides = tuple(self.spatial_prior.out_strides) + self.out_strides
        self._freeze_stages()

    # --- weights --------------------------------------------------------------------------
    def init_weights(self):
        """Random init is done at construction; a Pretrained init_cfg imports weights here
        (and logs a report of what was loaded, resized, filled, missing or unexpected)."""
        from .checkpoint import load_pretrained_from_init_cfg  # late: keeps registration light
        if load_pretrained_from_init_cfg(self, self.init_cfg) is None and self.init_cfg:
            super(ViRTrunk, self).init_weights()  # other init_cfg types: mmengine's initialisers
        self._is_init = True

    def _freeze_stages(self):
        if self.frozen_stages < 0:
            return
        frozen = [self.patch_embed, *self.blocks[:self.frozen_stages]]
        if self.frozen_stages >= len(self.blocks) and self.final_norm:
            frozen.append(self.norm)
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False
        self.pos_embed.requires_grad = False
        self.cls_token.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()  # keep frozen parts in eval mode (dropout, drop-path)
        return self

    # --- forward --------------------------------------------------------------------------
    def _check_input(self, x):
        if not torch.is_tensor(x) or x.dim() != 4:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f'ViR expects a batch of images (B, C, H, W); got {shape}. '
                             'Add a batch dimension with x[None] for a single image.')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'ViR was built for {self.in_channels}-channel input but got '
                             f'{x.shape[1]} channels; convert the images (e.g. grey or RGBA '
                             'to RGB) or set in_channels.')

    def forward(self, x):
        self._check_input(x)
        height, width = x.shape[-2:]
        pad_h = (-height) % self.patch_size
        pad_w = (-width) % self.patch_size
        if pad_h or pad_w:  # pad right/bottom; outputs are cropped back below
            x = F.pad(x, (0, pad_w, 0, pad_h))
        outs = []
        if self.spatial_prior is not None:
            for feats, stride in zip(self.spatial_prior(x), self.spatial_prior.out_strides):
                outs.append(feats[..., :math.ceil(height / stride), :math.ceil(width / stride)])
        tokens, grid = self.embed(x, with_cls_token=self.with_cls_token)
        ctx = self.context(grid, self.with_cls_token)
        _, taps = run_blocks(self.blocks, tokens, ctx, out_indices=self.out_indices,
                             with_cp=self.with_cp and self.training,
                             reuse_input=self._embedded_unseen())
        last_block = len(self.blocks) - 1
        first = len(outs)
        for position, index in enumerate(self.out_indices):
            feats = taps[index][:, :grid[0] * grid[1]]
            if index == last_block and self.final_norm:
                feats = self.norm(feats)
            feats = feats.transpose(1, 2).reshape(x.shape[0], -1, *grid)
            if self.pyramid == 'taps':
                feats = self.rescales[position](feats)
            stride = self.out_strides[first + position]
            outs.append(feats[..., :math.ceil(height / stride), :math.ceil(width / stride)])
        if self.extra_pool:  # ViTDet's stride-32 level: max-pool of the last (cropped) map
            outs.append(F.max_pool2d(outs[-1], kernel_size=2, stride=2, ceil_mode=True))
        return tuple(outs)
