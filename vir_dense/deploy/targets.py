"""What can be exported: a timm ViR by name, or a model of an mmseg/mmdet config, cut at a target.

Every target is an ``nn.Module`` taking one tensor, the image batch as the model's data
preprocessor leaves it (float, normalised, channels in the model's order, padded to the
model's size divisor), and returning a tensor or a tuple of tensors:

=================  ==========================  =============================================
source             target                      outputs
=================  ==========================  =============================================
timm name          ``backbone`` (default)      tokens (B, N [+1 class token], D), final norm
timm name          ``model``                   class logits (B, num_classes)
mmseg config       ``backbone``                the ViR maps (the UperNet configs: 4 maps)
mmseg config       ``model`` (default)         logits (B, classes, H, W), the input's size
mmdet config       ``backbone``                the ViR maps (and the spatial prior's)
mmdet config       ``backbone_neck`` (default) the neck's maps (5 for the FPN configs)
mmdet config       ``rpn``                     + the RPN head's raw scores and box deltas
mmdet config       ``model``                   boxes, scores, labels, masks (see below)
=================  ==========================  =============================================

``model`` of a Mask R-CNN is attempted as mmdet runs it (``predict``); the exporter stops at
mmcv's compiled RoIAlign / NMS (docs/deployment.md has the measured messages), which is why
``rpn`` (everything up to the proposals' NMS) is the furthest exportable cut.
"""
import os.path as osp
from dataclasses import dataclass
from typing import Tuple

import torch.nn as nn

from .errors import DeployError

TIMM_TARGETS = ('backbone', 'model')
SEG_TARGETS = ('backbone', 'model')
DET_TARGETS = ('backbone', 'backbone_neck', 'rpn', 'model')
DEFAULT_TARGET = {'timm': 'backbone', 'mmseg': 'model', 'mmdet': 'backbone_neck'}
RETENTION_MODES = ('auto', 'parallel', 'chunkwise', 'recurrent')


@dataclass
class ExportTarget:
    """A module ready to export, and what it is."""
    module: nn.Module
    kind: str  # 'timm', 'mmseg' or 'mmdet'
    target: str
    backbone: nn.Module  # the ViR inside (its retention mode is set)
    in_channels: int = 3

    def resolved_mode(self, shape: Tuple[int, int]) -> str:
        """The retention form the export traces at this image size ('auto' resolved)."""
        from vir_dense.ops.retention import resolve_mode
        patch = self.backbone.patch_embed.patch_size[0]
        tokens = -(-shape[0] // patch) * -(-shape[1] // patch) + 1
        return resolve_mode(self.backbone.retention_mode, tokens, self.backbone.chunk_size)


def is_config(source: str) -> bool:
    return source.endswith('.py') or osp.isfile(source)


def build_target(source: str, checkpoint=None, target=None, retention_mode='auto',
                 chunk_size=None, overrides=None) -> ExportTarget:
    """Build `target` of `source` (a timm model name or a config path) in eval mode, fp32, CPU.

    retention_mode: the ViR's form for the export ('auto': parallel up to 2048 tokens,
    chunkwise above, as at run time); chunk_size: cells per chunkwise tile (default: the
    model's). overrides: config options merged into the config (``--cfg-options``), or
    keyword arguments of ``timm.create_model`` for a timm name (e.g. ``dict(depth=2)``).
    """
    if retention_mode not in RETENTION_MODES:
        raise DeployError(f'retention mode must be one of {RETENTION_MODES}, '
                          f'got {retention_mode!r}')
    if checkpoint is not None and not osp.isfile(checkpoint):
        raise DeployError(f'checkpoint {checkpoint} not found')
    if is_config(source):
        built = _from_config(source, checkpoint, target, overrides)
    else:
        built = _from_timm(source, checkpoint, target, overrides)
    built.backbone.set_retention_mode(retention_mode, chunk_size)
    built.module.eval()
    return built


def _check_target(kind, target, allowed):
    target = target or DEFAULT_TARGET[kind]
    if target not in allowed:
        raise DeployError(f'target {target!r} does not exist for a {kind} model; '
                          f'choose one of {list(allowed)}')
    return target


def _from_timm(name, checkpoint, target, overrides):
    import timm

    import vir_dense.models  # noqa: F401  (registers the vir_* models)
    if not timm.is_model(name):
        raise DeployError(f'{name!r} is neither a config file nor a timm model; the ViR timm '
                          f'models are {timm.list_models("vir_*")}')
    target = _check_target('timm', target, TIMM_TARGETS)
    kwargs = dict(dynamic_img_size=True, **(overrides or {}))
    model = timm.create_model(name, pretrained=False, **kwargs)
    if checkpoint is not None:
        timm.models.load_checkpoint(model, checkpoint)
    module = model if target == 'model' else TimmFeatures(model)
    return ExportTarget(module, 'timm', target, model, model.patch_embed.proj.in_channels)


def _from_config(path, checkpoint, target, overrides):
    from vir_dense.config import config_scope, load_config
    scope = config_scope(load_config(path, overrides))
    if scope == 'mmseg':
        from vir_dense.apis.seg import init_segmentor
        target = _check_target('mmseg', target, SEG_TARGETS)
        model = init_segmentor(path, checkpoint, cfg_options=overrides)
        module = model.backbone if target == 'backbone' else SegmentorLogits(model)
    else:
        from vir_dense.apis import init_detector
        target = _check_target('mmdet', target, DET_TARGETS)
        model = init_detector(path, checkpoint, cfg_options=overrides)
        module = {'backbone': model.backbone, 'backbone_neck': DetectorFeatures(model),
                  'rpn': DetectorRPN(model), 'model': DetectorPredict(model)}[target]
    if not hasattr(model.backbone, 'set_retention_mode'):
        raise DeployError(f'{path}: the backbone is {type(model.backbone).__name__}, not ViR')
    return ExportTarget(module, scope, target, model.backbone, model.backbone.in_channels)


class TimmFeatures(nn.Module):
    """timm's forward_features: the normed tokens, class token last."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        return self.model.forward_features(image)


class SegmentorLogits(nn.Module):
    """mmseg's ``encode_decode``: backbone, decode head, logits resized to the input's size
    (what ``predict`` arg-maxes; the auxiliary head is training-only)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        shape = tuple(image.shape[-2:])
        metas = [dict(img_shape=shape, pad_shape=shape, ori_shape=shape)] * image.shape[0]
        return self.model.encode_decode(image, metas)


class DetectorFeatures(nn.Module):
    """Backbone + neck: the detector's ``extract_feat``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        return tuple(self.model.extract_feat(image))


class DetectorRPN(nn.Module):
    """Backbone + neck + the RPN head's convolutions: per level, objectness scores and box
    deltas (the anchors and NMS that turn them into proposals stay outside)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        feats = self.model.extract_feat(image)
        scores, deltas = self.model.rpn_head(feats)
        return tuple(scores) + tuple(deltas)


class DetectorPredict(nn.Module):
    """The whole detector as mmdet runs it at test time (``predict``, not rescaled):
    boxes (n, 4), scores (n,), labels (n,), masks (n, H, W) of the first image."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        from mmdet.structures import DetDataSample
        shape = tuple(image.shape[-2:])
        sample = DetDataSample(metainfo=dict(img_shape=shape, ori_shape=shape, pad_shape=shape,
                                             scale_factor=(1.0, 1.0), batch_input_shape=shape))
        result = self.model.predict(image, [sample], rescale=False)[0].pred_instances
        return result.bboxes, result.scores, result.labels, result.masks
