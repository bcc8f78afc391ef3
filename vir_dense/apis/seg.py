"""Segmentation inference: load a segmentor, run it on images at any size, write label maps.

    from vir_dense.apis.seg import init_segmentor, segment_array, segment_images
    model = init_segmentor('configs/upernet_vir_t_synthetic.py', 'work_dirs/.../iter_2000.pth',
                           retention_mode='chunkwise', chunk_size=256)   # whole-image mode
    labels = segment_array(model, read_rgb('image.jpg'))                 # (H, W) int64 class ids
    report = segment_images(model, ['images/'], 'out/')                  # *_color/_overlay/_label

High resolution. ``retention_mode='chunkwise'`` switches the ViR backbone to its row-chunked
retention form (same weights, same outputs as 'parallel', memory linear in the number of
tokens) and the segmentor to whole-image inference (``test_cfg.mode='whole'``). The logits are
then upsampled to full resolution and arg-maxed in bands of rows, so the full-resolution
(classes x H x W) logit tensor that mmseg materialises (10 GB for 150 classes at 4096x4096)
never exists. ``mode='slide'`` keeps mmseg's sliding window for comparison.

Any mmseg ``EncoderDecoder`` works: models from mmseg's ``init_model`` can be passed to
:func:`segment_images`, and models from :func:`init_segmentor` to mmseg's ``inference_model``
(they carry ``.cfg`` and ``.dataset_meta``).
"""
import os
import os.path as osp
import sys
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from vir_dense.ops.retention import check_memory_budget

from .build import init_model
from .inputs import ImagesReport, collect_images, read_rgb, unique_stem
from .seg_lean import _slide_logits, _whole_logits, upsample_argmax

__all__ = ['init_segmentor', 'configure_inference', 'build_inference_pipeline', 'segment_array',
           'upsample_argmax', 'colorize', 'overlay', 'segment_images', 'ImagesReport',
           'RETENTION_MODES', 'TEST_MODES']
# segment_array's memory at high resolution, whole-image mode (UperNet, C classes, image H x W):
# the backbone (chunkwise: linear in H x W), the lean UPerHead forward (one map of
# channels x H/4 x W/4 instead of ~9, the rest in bands of rows), the stride-4 logits
# (C x H/4 x W/4) and one band of upsampled logits; never C x H x W.

RETENTION_MODES = ('parallel', 'chunkwise', 'recurrent')
TEST_MODES = ('whole', 'slide')
DEFAULT_SLIDE = dict(crop_size=(512, 512), stride=(341, 341))


# --------------------------------------------------------------------------------------------
# Building the model
# --------------------------------------------------------------------------------------------
def init_segmentor(config, checkpoint: Optional[str] = None, device: str = 'cpu',
                   retention_mode: Optional[str] = None, chunk_size: Optional[int] = None,
                   mode: Optional[str] = None, cfg_options: Optional[dict] = None,
                   allow_partial: bool = False, memory_budget: Optional[int] = None):
    """A segmentor in eval mode with the checkpoint's weights and dataset meta, built and loaded
    as :func:`vir_dense.apis.build.init_model` does for detectors too (a checkpoint of another
    config raises :class:`~vir_dense.errors.CheckpointMismatchError` naming what differs);
    ``retention_mode``, ``chunk_size``, ``mode`` and ``memory_budget``: see
    :func:`configure_inference`."""
    model = init_model(config, checkpoint, device, 'mmseg', cfg_options, allow_partial)
    return configure_inference(model, retention_mode, chunk_size, mode,
                               memory_budget=memory_budget)


def configure_inference(model, retention_mode: Optional[str] = None,
                        chunk_size: Optional[int] = None, mode: Optional[str] = None,
                        crop_size: Optional[Tuple[int, int]] = None,
                        stride: Optional[Tuple[int, int]] = None,
                        memory_budget: Optional[int] = None):
    """Set the backbone's retention form and the segmentor's test mode (in place).

    ``retention_mode`` 'chunkwise' or 'recurrent' (linear memory) implies whole-image
    inference unless ``mode`` says otherwise; 'parallel' keeps the config's test mode.
    ``mode='slide'`` uses ``crop_size``/``stride`` (default: the config's, else 512 / 341).
    ``memory_budget``: bytes one chunkwise retention call may hold (the backbone's
    ``retention_memory_budget``). Works on any mmseg EncoderDecoder (e.g. one from mmseg's
    ``init_model``).
    """
    if retention_mode is not None or chunk_size is not None or memory_budget is not None:
        backbone = getattr(model, 'backbone', None)
        if not hasattr(backbone, 'set_retention_mode'):
            raise ValueError('--retention-mode/--chunk-size/--memory-budget need a ViR '
                             f'backbone; this model has {type(backbone).__name__}')
        if memory_budget is not None:
            check_memory_budget(memory_budget)
            backbone.retention_memory_budget = memory_budget
        if retention_mode is not None and retention_mode not in RETENTION_MODES:
            raise ValueError(f'retention_mode must be one of {RETENTION_MODES}, '
                             f'got {retention_mode!r}')
        backbone.set_retention_mode(retention_mode or backbone.retention_mode, chunk_size)
        cfg = getattr(model, 'cfg', None)
        if cfg is not None and isinstance(cfg.get('model', {}).get('backbone'), dict):
            cfg.model.backbone.retention_mode = backbone.retention_mode  # keep .cfg truthful
            cfg.model.backbone.chunk_size = backbone.chunk_size
            if memory_budget is not None:
                cfg.model.backbone.retention_memory_budget = backbone.retention_memory_budget
        if mode is None and retention_mode in ('chunkwise', 'recurrent'):
            mode = 'whole'
    if mode is not None:
        if mode not in TEST_MODES:
            raise ValueError(f'mode must be one of {TEST_MODES}, got {mode!r}')
        test_cfg = _as_config(getattr(model, 'test_cfg', None))
        test_cfg['mode'] = mode
        if mode == 'slide':
            test_cfg['crop_size'] = tuple(crop_size or test_cfg.get('crop_size')
                                          or DEFAULT_SLIDE['crop_size'])
            test_cfg['stride'] = tuple(stride or test_cfg.get('stride')
                                       or DEFAULT_SLIDE['stride'])
        model.test_cfg = test_cfg
        cfg = getattr(model, 'cfg', None)
        if cfg is not None and 'model' in cfg:
            cfg.model.test_cfg = test_cfg.copy()
    return model


def _as_config(test_cfg):
    from mmengine.config import ConfigDict
    return ConfigDict(dict(test_cfg or {}))


# --------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------
def build_inference_pipeline(cfg, scale: Union[str, Sequence[int]] = 'config'):
    """The config's test pipeline for in-memory BGR arrays, without annotations.

    ``scale``: 'config' keeps the config's test-time Resize; 'none' drops it (inference at the
    image's own resolution, what whole-image high-resolution inference is for); (W, H)
    replaces the Resize scale (aspect ratio kept).
    """
    from mmengine.dataset import Compose
    steps = []
    pipeline = cfg.get('test_pipeline') or cfg.test_dataloader.dataset.pipeline
    for step in pipeline:
        step = dict(step)
        kind = str(step['type']).split('.')[-1]
        if kind in ('LoadAnnotations', 'LoadDepthAnnotation'):
            continue
        if kind.startswith('LoadImageFrom'):
            step = dict(type='LoadImageFromNDArray')
        elif kind == 'Resize':
            if scale == 'none':
                continue
            if scale != 'config':
                step = dict(type='Resize', scale=tuple(int(v) for v in scale), keep_ratio=True)
        steps.append(step)
    if not steps or steps[0]['type'] != 'LoadImageFromNDArray':
        steps.insert(0, dict(type='LoadImageFromNDArray'))
    return Compose(steps)


def _is_plain_encoder_decoder(model) -> bool:
    return type(model).__name__ == 'EncoderDecoder' and hasattr(model, 'decode_head')


def _first_resize_size(meta: dict) -> Tuple[int, int]:
    """Where mmseg's decode head resizes whole-image logits to (BaseDecodeHead.predict_by_feat)."""
    if isinstance(meta['img_shape'], torch.Size):
        return tuple(meta['img_shape'])[:2]
    if 'pad_shape' in meta:
        return tuple(meta['pad_shape'])[:2]
    return tuple(meta['img_shape'])[:2]


def _to_labels(model, logits: torch.Tensor, meta: dict, first_size) -> torch.Tensor:
    """mmseg's post-processing (resize to ``first_size``, remove padding, un-flip, resize to
    ori_shape, argmax) of one image's logits (1, C, h, w), without full-size copies where
    possible: with no padding, no flip and first_size == ori_shape it is one banded resize."""
    align = bool(getattr(model, 'align_corners', False))
    threshold = getattr(getattr(model, 'decode_head', None), 'threshold', None)
    ori = tuple(int(v) for v in meta['ori_shape'][:2])
    pad = meta.get('img_padding_size', meta.get('padding_size', [0, 0, 0, 0])) or [0] * 4
    flip = meta.get('flip')
    first_size = tuple(int(v) for v in first_size)
    if any(pad) or flip or first_size != ori:
        if tuple(logits.shape[-2:]) != first_size:
            logits = F.interpolate(logits, size=first_size, mode='bilinear',
                                   align_corners=align)
        left, right, top, bottom = (int(v) for v in pad)
        height, width = logits.shape[-2:]
        logits = logits[:, :, top:height - bottom, left:width - right]
        if flip:
            direction = meta.get('flip_direction', 'horizontal')
            logits = logits.flip(dims=(3,) if direction == 'horizontal' else (2,))
    return upsample_argmax(logits[0], ori, align_corners=align, threshold=threshold)


@torch.no_grad()
def segment_array(model, image: np.ndarray, scale: Union[str, Sequence[int]] = 'config',
                  pipeline=None, return_logits: bool = False, lean: bool = True):
    """Class ids (H, W) int64 of an RGB uint8 image (H, W, 3) at the image's own size.

    ``scale``: see :func:`build_inference_pipeline` (ignored when ``pipeline`` is given).
    With ``return_logits`` also returns the logits the label map was computed from: the
    decode head's output (1, C, h, w) in whole mode (stride 4 for UperNet), the stitched
    full-size logits in slide mode. ``lean=False`` runs the decode head's own forward instead
    of the memory-lean UPerHead forward (same results; for comparisons).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'expected an RGB uint8 image (H, W, 3), got {image.dtype} '
                         f'{image.shape}; read files with vir_dense.apis.read_rgb')
    if pipeline is None:
        pipeline = build_inference_pipeline(model.cfg, scale)
    # mmseg pipelines and data preprocessors expect BGR (as cv2 loads it)
    data = pipeline(dict(img=np.ascontiguousarray(image[..., ::-1])))
    batch = model.data_preprocessor(
        dict(inputs=[data['inputs']], data_samples=[data['data_samples']]), False)
    inputs, samples = batch['inputs'], batch['data_samples']
    meta = dict(samples[0].metainfo)
    if not _is_plain_encoder_decoder(model):  # cascades etc.: mmseg's own path
        result = model.predict(inputs, samples)[0]
        labels = result.pred_sem_seg.data[0].long()
        return (labels, result.seg_logits.data[None]) if return_logits else labels
    test_mode = model.test_cfg.get('mode', 'whole')
    if test_mode == 'slide':
        logits = _slide_logits(model, inputs, meta)
        first_size = logits.shape[-2:]
    elif test_mode == 'whole':
        logits = _whole_logits(model, inputs, lean=lean)
        first_size = _first_resize_size(meta)
    else:
        raise ValueError(f'unsupported test mode {test_mode!r}; use one of {TEST_MODES}')
    labels = _to_labels(model, logits, meta, first_size)
    return (labels, logits) if return_logits else labels


def colorize(labels: np.ndarray, palette) -> np.ndarray:
    """RGB uint8 (H, W, 3) image of a label map; ids beyond the palette are black."""
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    lut = np.zeros((max(int(labels.max(initial=0)) + 1, len(palette)), 3), np.uint8)
    lut[:len(palette)] = palette
    return lut[labels]


def overlay(image: np.ndarray, color: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """``color`` blended over ``image`` (both RGB uint8) with ``opacity`` in [0, 1]."""
    blend = image.astype(np.float32) * (1 - opacity) + color.astype(np.float32) * opacity
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def _palette_for(meta: dict, num_classes: int) -> np.ndarray:
    """The dataset palette, completed with fixed random colours if it is missing or short."""
    palette = [tuple(c) for c in (meta.get('palette') or [])][:num_classes]
    if len(palette) < num_classes:
        rng = np.random.RandomState(42)  # deterministic, as mmseg's fallback palettes
        extra = rng.randint(0, 256, size=(num_classes - len(palette), 3))
        palette += [tuple(int(v) for v in c) for c in extra]
    return np.asarray(palette, np.uint8).reshape(-1, 3)


def _num_classes(model) -> int:
    head = getattr(model, 'decode_head', None)
    head = head[-1] if isinstance(head, torch.nn.ModuleList) else head
    classes = (getattr(model, 'dataset_meta', None) or {}).get('classes') or ()
    return int(getattr(head, 'num_classes', 0) or len(classes))


def segment_images(model, inputs: Sequence[str], out_dir: str, opacity: float = 0.5,
                   scale: Union[str, Sequence[int]] = 'config', progress: bool = True,
                   log=None) -> ImagesReport:
    """Segment images, folders or globs; write ``<stem>_color.png`` (palette colours),
    ``<stem>_overlay.png`` (colours blended on the image with ``opacity``) and
    ``<stem>_label.png`` (class ids; uint8, or uint16 beyond 256 classes) into ``out_dir``.

    A file that cannot be read (or whose inference fails) is reported through ``log`` and
    skipped; the others are still processed. Returns an :class:`~vir_dense.apis.inputs.ImagesReport`.
    """
    from PIL import Image
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f'opacity must be in [0, 1], got {opacity}')
    paths = collect_images(inputs)
    os.makedirs(out_dir, exist_ok=True)
    num_classes = _num_classes(model)
    meta = getattr(model, 'dataset_meta', None) or {}
    palette = _palette_for(meta, num_classes)
    label_dtype = np.uint8 if num_classes <= 256 else np.uint16
    pipeline = build_inference_pipeline(model.cfg, scale)
    report, used = ImagesReport(), set()
    iterator = paths
    if progress:
        from tqdm import tqdm
        iterator = tqdm(paths, desc='segmenting', unit='img', file=sys.stderr)
    for path in iterator:
        try:
            image = read_rgb(path)
        except ValueError as err:
            report.failed.append((path, str(err)))
            log(f'skipped: {err}')
            continue
        try:
            labels = segment_array(model, image, pipeline=pipeline).cpu().numpy()
        except (RuntimeError, ValueError, MemoryError) as err:
            reason = f'inference failed on {path}: {type(err).__name__}: {err}'
            report.failed.append((path, reason))
            log(f'skipped: {reason}')
            continue
        stem = unique_stem(path, used)
        color = colorize(labels, palette)
        files = dict(color=osp.join(out_dir, f'{stem}_color.png'),
                     overlay=osp.join(out_dir, f'{stem}_overlay.png'),
                     label=osp.join(out_dir, f'{stem}_label.png'))
        Image.fromarray(color).save(files['color'])
        Image.fromarray(overlay(image, color, opacity)).save(files['overlay'])
        Image.fromarray(labels.astype(label_dtype)).save(files['label'])
        report.outputs[path] = files
    return report
