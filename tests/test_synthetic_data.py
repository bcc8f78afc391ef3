"""The embedded synthetic datasets: layout, exact masks, determinism, idempotence, mm loaders."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inprocess import load_tool
from vir_dense.datasets import (META_FILE, SYNTHETIC_CLASSES, SYNTHETIC_PALETTE,
                                make_ade20k_dataset, make_coco_dataset, read_meta)

import pycocotools.coco as pycocotools_coco  # a pinned dependency: missing is a failure

NUM_CLASSES = len(SYNTHETIC_CLASSES)
SIZE = (72, 104)  # H != W, so a swapped x/y anywhere shows up
SMALL = dict(num_train=6, num_val=3, image_size=SIZE, seed=0)


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
    return Path(make_coco_dataset(tmp_path_factory.mktemp('coco'), **SMALL))


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory):
    return Path(make_ade20k_dataset(tmp_path_factory.mktemp('ade'), **SMALL))


def load_coco(root, split='train'):
    return pycocotools_coco.COCO(str(root / 'annotations' / f'instances_{split}2017.json'))


def read_label(path):
    return np.asarray(Image.open(path))


def erode(mask):
    """``mask`` eroded by one pixel (4-neighbourhood; outside the image counts as outside)."""
    padded = np.pad(mask, 1)
    return (mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])


def test_coco_layout(coco_root):
    for split, num in (('train', 6), ('val', 3)):
        coco = load_coco(coco_root, split)
        images = coco.loadImgs(coco.getImgIds())
        assert len(images) == num
        for info in images:
            assert (info['height'], info['width']) == SIZE
            with Image.open(coco_root / f'{split}2017' / info['file_name']) as image:
                assert image.mode == 'RGB' and image.size == (SIZE[1], SIZE[0])
            assert 1 <= len(coco.getAnnIds(imgIds=info['id'])) <= 5
        cats = coco.loadCats(coco.getCatIds())
        assert [(c['id'], c['name']) for c in cats] == list(
            zip(range(1, NUM_CLASSES + 1), SYNTHETIC_CLASSES))
    assert read_meta(coco_root)['params']['image_size'] == list(SIZE)


def test_coco_annotations_describe_their_masks(coco_root):
    coco = load_coco(coco_root)
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        union = np.zeros(SIZE, np.int32)
        for ann in anns:
            assert ann['iscrowd'] == 0 and 1 <= ann['category_id'] <= NUM_CLASSES
            assert len(ann['segmentation']) == 1 and len(ann['segmentation'][0]) >= 6
            mask = coco.annToMask(ann).astype(bool)
            assert ann['area'] == mask.sum() > 0
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann['bbox']
            assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            union += mask
        assert union.max() == 1  # masks never overlap: each polygon is the visible part


def pixel_centres_inside(polygon, height, width):
    """Independent rasteriser: even-odd rule at pixel centres (x + 0.5, y + 0.5)."""
    xs, ys = np.asarray(polygon, float).reshape(-1, 2).T
    px = np.arange(width)[None, :] + 0.5
    py = np.arange(height)[:, None] + 0.5
    inside = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in zip(xs, ys, np.roll(xs, -1), np.roll(ys, -1)):
        if y0 == y1:
            continue  # a horizontal edge crosses no horizontal ray
        crosses_row = (y0 > py) != (y1 > py)
        inside ^= crosses_row & (px < x0 + (py - y0) * (x1 - x0) / (y1 - y0))
    return inside


def test_polygons_are_the_shapes(coco_root):
    """pycocotools' rasterisation (= the painted pixels) agrees with an independent one."""
    coco = load_coco(coco_root)
    ious = []
    for ann in coco.loadAnns(coco.getAnnIds()):
        reference = pixel_centres_inside(ann['segmentation'][0], *SIZE)
        mask = coco.annToMask(ann).astype(bool)
        ious.append((reference & mask).sum() / (reference | mask).sum())
    assert min(ious) > 0.8 and np.mean(ious) > 0.95


def test_image_pixels_follow_masks(coco_root):
    """Inside a mask the JPEG shows one colour; just outside it mostly does not."""
    coco = load_coco(coco_root)
    checked = 0
    for info in coco.loadImgs(coco.getImgIds()):
        image = np.asarray(Image.open(coco_root / 'train2017' / info['file_name']), np.float32)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=info['id'])):
            mask = coco.annToMask(ann).astype(bool)
            inner = erode(erode(mask))  # JPEG blurs the edges
            if inner.sum() < 10:
                continue
            colour = np.median(image[inner], axis=0)
            near = np.linalg.norm(image - colour, axis=-1) < 45
            assert near[inner].mean() > 0.9
            assert near[~mask].mean() < 0.5
            checked += 1
    assert checked >= 5


def test_ade_layout_and_labels(ade_root):
    for folder, prefix, num in (('training', 'ADE_train_', 6), ('validation', 'ADE_val_', 3)):
        images = sorted((ade_root / 'images' / folder).glob('*.jpg'))
        labels = sorted((ade_root / 'annotations' / folder).glob('*.png'))
        assert len(images) == len(labels) == num
        assert [p.stem for p in images] == [p.stem for p in labels]
        assert all(p.stem.startswith(prefix) for p in images)
        for path in labels:
            with Image.open(path) as png:
                assert png.mode == 'L' and png.size == (SIZE[1], SIZE[0])
            values = np.unique(read_label(path))
            assert values.min() >= 0 and values.max() <= NUM_CLASSES and len(values) >= 2


def test_coco_and_ade_show_the_same_scenes(coco_root, ade_root):
    """Same seed and size: the label map is exactly the union of the COCO polygon masks."""
    coco = load_coco(coco_root)
    for index, image_id in enumerate(sorted(coco.getImgIds())):
        expected = np.zeros(SIZE, np.uint8)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            expected[coco.annToMask(ann).astype(bool)] = ann['category_id']
        label = read_label(ade_root / 'annotations' / 'training' / f'ADE_train_{index + 1:08d}.png')
        np.testing.assert_array_equal(label, expected)


def test_determinism(tmp_path, coco_root, ade_root):
    small = dict(SMALL, num_val=1)
    again = Path(make_coco_dataset(tmp_path / 'coco', **small))
    ann = 'annotations/instances_train2017.json'
    assert (again / ann).read_bytes() == (coco_root / ann).read_bytes()
    ade_again = Path(make_ade20k_dataset(tmp_path / 'ade', **small))
    for path in sorted((ade_root / 'annotations' / 'training').glob('*.png')):
        twin = ade_again / path.relative_to(ade_root)
        np.testing.assert_array_equal(read_label(path), read_label(twin))

    other = Path(make_coco_dataset(tmp_path / 'coco_seed1', **dict(small, seed=1)))
    assert (other / ann).read_bytes() != (coco_root / ann).read_bytes()


def test_idempotent_and_regenerates_on_new_params(tmp_path):
    root = tmp_path / 'ade'
    make_ade20k_dataset(root, num_train=3, num_val=1, image_size=48)
    meta = root / META_FILE
    stamp = meta.stat().st_mtime_ns
    make_ade20k_dataset(root, num_train=3, num_val=1, image_size=48)
    assert meta.stat().st_mtime_ns == stamp  # kept as is

    make_ade20k_dataset(root, num_train=2, num_val=1, image_size=40)
    assert len(list((root / 'images' / 'training').glob('*.jpg'))) == 2  # stale files gone
    assert read_label(root / 'annotations/training/ADE_train_00000001.png').shape == (40, 40)
    assert read_meta(root)['params']['num_train'] == 2

    (root / 'images' / 'training' / 'ADE_train_00000002.jpg').unlink()  # damaged dataset
    make_ade20k_dataset(root, num_train=2, num_val=1, image_size=40)
    assert (root / 'images' / 'training' / 'ADE_train_00000002.jpg').is_file()


def test_refuses_to_overwrite_foreign_data(tmp_path):
    (tmp_path / 'train2017').mkdir()
    (tmp_path / 'train2017' / '000000000001.jpg').write_bytes(b'not ours')
    with pytest.raises(FileExistsError):
        make_coco_dataset(tmp_path, num_train=1, num_val=1, image_size=32)
    make_coco_dataset(tmp_path, num_train=1, num_val=1, image_size=32, overwrite=True)
    assert Image.open(tmp_path / 'train2017' / '000000000001.jpg').size == (32, 32)


def test_cli(tmp_path, capsys):
    cli = load_tool('dataset_converters/make_synthetic_data')
    cli.main(['all', '--out', str(tmp_path), '--num-train', '2', '--num-val', '1',
              '--size', '40', '48', '--seed', '3'])
    out = capsys.readouterr().out
    assert 'synthetic_coco' in out and 'synthetic_ade' in out
    coco = json.loads((tmp_path / 'synthetic_coco/annotations/instances_val2017.json').read_text())
    assert (coco['images'][0]['height'], coco['images'][0]['width']) == (40, 48)
    assert read_meta(tmp_path / 'synthetic_ade')['params']['seed'] == 3
    cli.main(['coco', '--out', str(tmp_path / 'synthetic_coco'), '--num-train', '2',
              '--num-val', '1', '--size', '40', '48', '--seed', '3'])
    assert 'up to date' in capsys.readouterr().out


def test_mmdet_coco_dataset_loads(coco_root):
    from mmdet.datasets import CocoDataset
    from mmdet.utils import register_all_modules
    register_all_modules()
    dataset = CocoDataset(
        data_root=str(coco_root), ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'), metainfo=dict(classes=SYNTHETIC_CLASSES),
        pipeline=[dict(type='LoadImageFromFile'),
                  dict(type='LoadAnnotations', with_bbox=True, with_mask=True)])
    assert len(dataset) == 6
    sample = dataset[0]
    assert sample['img'].shape == (*SIZE, 3)
    assert len(sample['gt_bboxes']) == len(sample['gt_masks']) >= 1
    assert sample['gt_bboxes_labels'].max() < NUM_CLASSES


def test_mmseg_dataset_loads(ade_root):
    from mmseg.datasets import BaseSegDataset
    from mmseg.utils import register_all_modules
    register_all_modules()
    dataset = BaseSegDataset(
        data_root=str(ade_root), img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True,
        metainfo=dict(classes=SYNTHETIC_CLASSES, palette=SYNTHETIC_PALETTE),
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=[dict(type='LoadImageFromFile'),
                  dict(type='LoadAnnotations')])  # reduce_zero_label comes from the dataset
    assert len(dataset) == 6
    values = set(np.unique(dataset[0]['gt_seg_map']).tolist())
    assert 255 in values and values - {255} and max(values - {255}) < NUM_CLASSES


def test_mmdet_coco_metric_scores_ground_truth_perfectly(coco_root):
    """CocoMetric (bbox + segm) reads the annotation file; the ground truth scores mAP 1."""
    import torch
    from mmdet.evaluation import CocoMetric
    ann_file = coco_root / 'annotations' / 'instances_val2017.json'
    metric = CocoMetric(ann_file=str(ann_file), metric=['bbox', 'segm'])
    metric.dataset_meta = dict(classes=SYNTHETIC_CLASSES)
    coco = load_coco(coco_root, 'val')
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a['bbox'] for a in anns)]
        pred = dict(bboxes=torch.tensor(boxes, dtype=torch.float32),
                    scores=torch.ones(len(anns)),
                    labels=torch.tensor([a['category_id'] - 1 for a in anns]),
                    masks=torch.from_numpy(np.stack([coco.annToMask(a) for a in anns])).bool())
        metric.process({}, [dict(img_id=image_id, ori_shape=SIZE, pred_instances=pred)])
    results = metric.evaluate(size=len(coco.getImgIds()))
    assert results['coco/bbox_mAP'] == pytest.approx(1.0)
    assert results['coco/segm_mAP'] == pytest.approx(1.0)
