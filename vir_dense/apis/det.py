"""Detection inference: load a trained detector, run it on images, export COCO results.

    from vir_dense.apis import init_detector, inference_detector, read_rgb
    model = init_detector('configs/maskrcnn_vir_t_synthetic.py', 'work_dirs/.../epoch_12.pth')
    result = inference_detector(model, read_rgb('image.jpg'))          # a DetDataSample
    records = result_to_coco(result, image_id=1, category_ids=coco_category_ids(model))
    report = detect_images(model, ['images/'], 'out/')  # out/results.json + out/vis/*.png

Images are RGB uint8 arrays (``read_rgb``); the model's data preprocessor does its own
channel order and normalisation. Several images go through the model as one batch.
"""
import json
import os
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .build import init_model
from .inputs import ImagesReport, collect_images, read_rgb, unique_stem

__all__ = ['init_detector', 'inference_detector', 'detect_images', 'build_test_pipeline',
           'result_to_coco', 'coco_category_ids', 'coco_image_ids', 'build_visualizer']


def init_detector(config, checkpoint: Optional[str] = None, device: str = 'cpu',
                  cfg_options: Optional[dict] = None, allow_partial: bool = False):
    """A detector in eval mode with the checkpoint's weights and dataset meta (class names);
    see :func:`vir_dense.apis.build.init_model` (the same path as ``init_segmentor``)."""
    return init_model(config, checkpoint, device, 'mmdet', cfg_options, allow_partial)


def build_test_pipeline(cfg):
    """The config's test pipeline for in-memory images: no file loading, no annotations."""
    from mmcv.transforms import Compose
    steps = []
    for step in cfg.test_dataloader.dataset.pipeline:
        kind = str(step['type']).split('.')[-1]
        if kind == 'LoadImageFromFile':
            steps.append(dict(type='mmdet.LoadImageFromNDArray'))
        elif kind in ('LoadAnnotations', 'LoadPanopticAnnotations'):
            continue
        else:
            steps.append(step)
    return Compose(steps)


@torch.no_grad()
def inference_detector(model, images: Union[np.ndarray, Sequence[np.ndarray]],
                       batch_size: int = 1, pipeline=None):
    """Run the detector on RGB uint8 image(s); one DetDataSample per image (a list for a list).

    Predictions are in the original image's coordinates (``pred_instances`` with bboxes xyxy,
    scores, labels and, for Mask R-CNN, boolean masks).
    """
    single = isinstance(images, np.ndarray)
    images = [images] if single else list(images)
    pipeline = pipeline or build_test_pipeline(model.cfg)
    results = []
    for start in range(0, len(images), max(1, batch_size)):
        inputs, samples = [], []
        for index, image in enumerate(images[start:start + batch_size]):
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f'expected an RGB image (H, W, 3), got shape {image.shape}')
            # mmdet's pipelines hold images in BGR (as cv2 reads them); bgr_to_rgb undoes it.
            data = pipeline(dict(img=np.ascontiguousarray(image[..., ::-1]),
                                 img_id=start + index))
            inputs.append(data['inputs'])
            samples.append(data['data_samples'])
        results.extend(model.test_step(dict(inputs=inputs, data_samples=samples)))
    return results[0] if single else results


def coco_category_ids(model_or_cfg, classes: Optional[Sequence[str]] = None) -> List[int]:
    """COCO category id of each class: from the test annotation file when it is there (real
    COCO ids have gaps), else 1..K in class order."""
    cfg = getattr(model_or_cfg, 'cfg', model_or_cfg)
    if classes is None:
        classes = (getattr(model_or_cfg, 'dataset_meta', None) or {}).get('classes', ())
    categories = _annotation_json(cfg, 'categories') or []
    by_name = {c['name']: c['id'] for c in categories}
    if classes and all(name in by_name for name in classes):
        return [by_name[name] for name in classes]
    return list(range(1, len(classes) + 1))


def coco_image_ids(model_or_cfg) -> Dict[str, int]:
    """file name -> image id of the test annotation file ({} when there is none)."""
    cfg = getattr(model_or_cfg, 'cfg', model_or_cfg)
    return {osp.basename(i['file_name']): i['id'] for i in _annotation_json(cfg, 'images') or []}


_JSON_CACHE: Dict[str, dict] = {}


def _annotation_json(cfg, key):
    try:
        dataset = cfg.test_dataloader.dataset
        while 'dataset' in dataset:
            dataset = dataset.dataset
        ann_file = dataset.get('ann_file')
        root = dataset.get('data_root') or ''
        path = ann_file if not ann_file or osp.isabs(ann_file) else osp.join(root, ann_file)
    except (AttributeError, KeyError):
        return None
    if not path or not osp.isfile(path):
        return None
    if path not in _JSON_CACHE:
        with open(path) as f:
            _JSON_CACHE[path] = json.load(f)
    return _JSON_CACHE[path].get(key)


def result_to_coco(result, image_id: int, category_ids: Sequence[int],
                   file_name: Optional[str] = None, score_thr: float = 0.0) -> List[dict]:
    """COCO results records (bbox xywh, score, category_id, RLE segmentation) of one image."""
    from pycocotools import mask as mask_utils
    pred = result.pred_instances
    keep = pred.scores >= score_thr
    bboxes = pred.bboxes[keep].cpu().numpy()
    scores = pred.scores[keep].cpu().numpy()
    labels = pred.labels[keep].cpu().numpy()
    masks = pred.masks[keep].cpu().numpy() if 'masks' in pred else None
    records = []
    for i, (box, score, label) in enumerate(zip(bboxes, scores, labels)):
        x1, y1, x2, y2 = (float(v) for v in box)
        record = dict(image_id=int(image_id), category_id=int(category_ids[int(label)]),
                      bbox=[round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                      score=round(float(score), 5))
        if masks is not None:
            rle = mask_utils.encode(np.asfortranarray(masks[i].astype(np.uint8)))
            rle['counts'] = rle['counts'].decode('ascii')
            record['segmentation'] = rle
        if file_name is not None:
            record['file_name'] = file_name
        records.append(record)
    return records


def build_visualizer(model, name='vir_dense_infer_det'):
    """mmdet's DetLocalVisualizer with the model's class names and palette."""
    from mmdet.registry import VISUALIZERS
    from mmdet.visualization import DetLocalVisualizer
    vis_cfg = dict(model.cfg.get('visualizer') or dict(type='DetLocalVisualizer'))
    vis_cfg['name'] = name
    vis_cfg.pop('vis_backends', None)  # draw only; the caller writes the files
    vis_cfg.pop('save_dir', None)
    visualizer = DetLocalVisualizer.get_instance(name) if DetLocalVisualizer.check_instance_created(
        name) else VISUALIZERS.build(vis_cfg)
    visualizer.dataset_meta = model.dataset_meta
    return visualizer


def detect_images(model, inputs: Sequence[str], out_dir: str, score_thr: float = 0.3,
                  batch_size: int = 1, draw: bool = True, progress: bool = True,
                  log=None) -> ImagesReport:
    """Detect on images, folders or globs (the detection twin of ``segment_images``).

    Writes ``out_dir/results.json`` in COCO results format (every prediction the model keeps,
    so the file can be scored with pycocotools: images named in the config's test annotation
    file keep their ids, others get new ones) and, with ``draw``, ``out_dir/vis/<stem>.png``
    (predictions with score >= ``score_thr``). A file that cannot be read is reported through
    ``log`` and skipped. Returns an :class:`~vir_dense.apis.inputs.ImagesReport` (its
    ``files['results']`` is the JSON file).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    paths = collect_images(inputs)
    pipeline = build_test_pipeline(model.cfg)
    category_ids = coco_category_ids(model)
    known_ids = coco_image_ids(model)
    next_id = max(known_ids.values(), default=0) + 1
    visualizer = build_visualizer(model) if draw else None
    vis_dir = osp.join(out_dir, 'vis')
    os.makedirs(vis_dir if draw else out_dir, exist_ok=True)
    report, used, records, batch = ImagesReport(), set(), [], []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(paths), desc='detecting', unit='img', file=sys.stderr)

    def flush():
        nonlocal next_id
        results = inference_detector(model, [image for _, image in batch],
                                     batch_size=batch_size, pipeline=pipeline)
        for (path, image), result in zip(batch, results):
            base = osp.basename(path)
            image_id = known_ids.get(base)
            if image_id is None:
                image_id, next_id = next_id, next_id + 1
            records.extend(result_to_coco(result, image_id, category_ids, file_name=base))
            report.outputs[path] = {}
            if visualizer is not None:
                stem = unique_stem(path, used)
                drawing = osp.join(vis_dir, f'{stem}.png')
                visualizer.add_datasample(stem, image, data_sample=result, draw_gt=False,
                                          pred_score_thr=score_thr, out_file=drawing)
                report.outputs[path]['vis'] = drawing
            if bar is not None:
                bar.update(1)
        batch.clear()

    for path in paths:
        try:
            batch.append((path, read_rgb(path)))
        except ValueError as err:
            report.failed.append((path, str(err)))
            log(f'skipped: {err}')
            if bar is not None:
                bar.update(1)
            continue
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    if bar is not None:
        bar.close()
    report.files['results'] = osp.join(out_dir, 'results.json')
    with open(report.files['results'], 'w') as f:
        json.dump(records, f)
    return report
