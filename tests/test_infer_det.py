"""tools/infer_det.py and vir_dense.apis.det on a randomly initialised tiny detector."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vir_dense.datasets import SYNTHETIC_CLASSES, render_scene
from inprocess import run_tool

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / 'configs' / 'maskrcnn_vir_t_synthetic.py')
OPTIONS = ['model.backbone.arch.num_layers=1', 'model.backbone.out_indices=(0,)',
           'test_dataloader.dataset.pipeline.1.scale=(64,64)']


def options_dict():
    from mmengine.config import DictAction
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(['--cfg-options', *OPTIONS]).cfg_options


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A checkpoint of the tiny model as tools/train.py would save it (random weights)."""
    from vir_dense.apis import init_detector
    torch.manual_seed(0)
    model = init_detector(CONFIG, None, cfg_options=options_dict())
    path = tmp_path_factory.mktemp('ckpt') / 'tiny.pth'
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': {'classes': SYNTHETIC_CLASSES}}}, path)
    return path


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    Image.fromarray(render_scene(rng, (64, 80)).image).save(folder / 'a.jpg')
    rgba = np.dstack([render_scene(rng, 64).image, np.full((64, 64), 200, np.uint8)])
    Image.fromarray(rgba, 'RGBA').save(folder / 'b.png')
    (folder / 'broken.jpg').write_bytes(b'not an image at all')
    return folder


def run_infer(args, capsys):
    return run_tool('infer_det', args, capsys)


def test_infer_det_writes_pngs_and_json_and_skips_corrupt(checkpoint, images, tmp_path, capsys):
    out = tmp_path / 'out'
    proc = run_infer([CONFIG, str(checkpoint), str(images), str(images / 'a.jpg'),
                      '--out-dir', str(out), '--score-thr', '0.1',
                      '--cfg-options', *OPTIONS], capsys)
    assert proc.returncode == 1, proc.stderr[-4000:]  # 1: some file was skipped
    assert 'broken.jpg' in proc.stderr and 'skipped' in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert sorted(p.name for p in (out / 'vis').iterdir()) == ['a.png', 'b.png']
    assert Image.open(out / 'vis' / 'a.png').size == (80, 64)  # drawn on the original size
    records = json.loads((out / 'results.json').read_text())
    assert records, 'a random detector still keeps boxes above test_cfg.score_thr'
    assert {r['file_name'] for r in records} <= {'a.jpg', 'b.png'}
    ids = {r['file_name']: r['image_id'] for r in records}
    assert len(set(ids.values())) == len(ids)  # one id per image
    for record in records:
        assert set(record) == {'image_id', 'category_id', 'bbox', 'score', 'segmentation',
                               'file_name'}
        assert 1 <= record['category_id'] <= len(SYNTHETIC_CLASSES)
        assert set(record['segmentation']) == {'size', 'counts'}
        assert isinstance(record['segmentation']['counts'], str)


def test_infer_det_clear_errors(checkpoint, images, tmp_path, capsys):
    proc = run_infer([CONFIG, str(checkpoint), str(images / 'broken.jpg'),
                      '--out-dir', str(tmp_path), '--cfg-options', *OPTIONS], capsys)
    assert proc.returncode == 2 and 'no image could be read' in proc.stderr
    assert 'Traceback' not in proc.stderr
    proc = run_infer([CONFIG, str(tmp_path / 'nope.pth'), str(images)], capsys)
    assert proc.returncode == 2 and 'nope.pth not found' in proc.stderr
    proc = run_infer([CONFIG, str(checkpoint), str(tmp_path / 'missing_*.jpg')], capsys)
    assert proc.returncode == 2 and 'no images found' in proc.stderr


def test_infer_det_refuses_a_checkpoint_of_another_config(checkpoint, images, capsys):
    """The tiny checkpoint has 1 block; the config with 2 blocks (and the full config with its
    other classes) must stop with what differs, never run a half-random model."""
    two_blocks = [o for o in OPTIONS if 'num_layers' not in o] + [
        'model.backbone.arch.num_layers=2']
    proc = run_infer([CONFIG, str(checkpoint), str(images), '--cfg-options', *two_blocks],
                     capsys)
    assert proc.returncode == 2 and 'does not fit the model' in proc.stderr, proc.stderr
    assert 'keys missing from the checkpoint: backbone.blocks.1.' in proc.stderr
    assert 'Traceback' not in proc.stderr
    full = str(ROOT / 'configs' / 'maskrcnn_vir_s_coco.py')
    proc = run_infer([full, str(checkpoint), str(images)], capsys)
    assert proc.returncode == 2 and 'does not fit the model' in proc.stderr
    assert 'another number of classes: roi_head.bbox_head.fc_cls.weight has' in proc.stderr
    assert 'vs 81 in the config' in proc.stderr, proc.stderr


def test_python_api(checkpoint, images):
    from pycocotools import mask as mask_utils

    from vir_dense.apis import (coco_category_ids, inference_detector, init_detector,
                                read_rgb, result_to_coco)
    model = init_detector(CONFIG, str(checkpoint), cfg_options=options_dict())
    assert tuple(model.dataset_meta['classes']) == SYNTHETIC_CLASSES
    image = read_rgb(images / 'a.jpg')
    single = inference_detector(model, image)
    batch = inference_detector(model, [image, read_rgb(images / 'b.png')], batch_size=2)
    assert len(batch) == 2
    pred = single.pred_instances
    assert pred.masks.shape[1:] == image.shape[:2]
    # Batched and single inference agree (padding must not change the predictions).
    assert torch.allclose(batch[0].pred_instances.scores[:5], pred.scores[:5], atol=1e-4)
    records = result_to_coco(single, 7, coco_category_ids(model))
    assert len(records) == len(pred)
    first = records[0]
    decoded = mask_utils.decode(dict(first['segmentation'], counts=first['segmentation'][
        'counts'].encode()))
    assert np.array_equal(decoded.astype(bool), pred.masks[0].numpy())
    x1, y1 = pred.bboxes[0, :2].tolist()
    assert first['bbox'][:2] == pytest.approx([x1, y1], abs=0.01)
