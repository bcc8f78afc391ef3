"""Embedded synthetic datasets, so every tool of the project runs with no download.

Each image shows 1-5 filled shapes (classes: ``SYNTHETIC_CLASSES``) in random colours, sizes,
positions and rotations on a varied background (flat, gradient, stripes, checker, blotches,
plus pixel noise). The colour carries no class information: a model must learn the shape.

One core renders a scene (``render_scene``); two writers store scenes in real dataset layouts:

* ``make_coco_dataset``: COCO instances layout (``train2017/``, ``val2017/``,
  ``annotations/instances_{train,val}2017.json``) read unchanged by mmdet's ``CocoDataset`` and
  ``CocoMetric`` (bbox + segm). ``category_id`` is 1..K; ``segmentation`` is the polygon that was
  drawn: every shape is painted from ``pycocotools``' own rasterisation of that polygon, so
  ``COCO.annToMask`` gives exactly the painted pixels. ``area`` is the mask area and ``bbox``
  (xywh) the tight box of the mask. Masks never overlap (one pixel of margin), so there is no
  occlusion and each polygon is the visible part of its object.
* ``make_ade20k_dataset``: ``ADEChallengeData2016`` layout (``images/{training,validation}/*.jpg``,
  ``annotations/{training,validation}/*.png``) with single-channel uint8 label maps: 0 is
  background ("other") and shape classes are 1..K. Use ``reduce_zero_label=True`` as for ADE20K:
  classes become 0..K-1 and background becomes 255, i.e. ignored, so background is neither
  trained nor scored (``SYNTHETIC_CLASSES`` lists the K shape classes only).

Scene ``i`` of a split depends only on ``(seed, split, i)``: the COCO and ADE20K datasets made
with the same seed and image size show the same scenes, and a larger dataset extends a smaller
one. The same parameters give byte-identical annotation files and label maps.

The writers are idempotent: a ``vir_dense_synthetic.json`` meta file (parameters and
``GENERATOR_VERSION``) is written last; a later call with the same parameters returns at once,
one with other parameters regenerates.
"""
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

SYNTHETIC_CLASSES = ('circle', 'square', 'triangle', 'star')
SYNTHETIC_PALETTE = ((220, 20, 60), (0, 130, 200), (60, 180, 75), (255, 190, 0))
SYNTHETIC_METAINFO = dict(classes=SYNTHETIC_CLASSES, palette=SYNTHETIC_PALETTE)

# Bump whenever rendering or file layout changes: existing datasets then get regenerated.
GENERATOR_VERSION = 1
META_FILE = 'vir_dense_synthetic.json'

DEFAULT_COCO_ROOT = 'data/synthetic_coco'
DEFAULT_ADE_ROOT = 'data/synthetic_ade'
DEFAULT_NUM_TRAIN = 240
DEFAULT_NUM_VAL = 60
DEFAULT_IMAGE_SIZE = 256
DEFAULT_MAX_INSTANCES = 5

CIRCLE_VERTICES = 40
STAR_INNER_RATIO = 0.45
RADIUS_RANGE = (0.07, 0.2)  # circumradius, as a fraction of the shorter image side
MIN_RADIUS_PX = 4.0
MIN_AREA_PX = 12
PLACEMENT_ATTEMPTS = 30
JPEG_QUALITY = 95

ImageSize = Union[int, Sequence[int]]
Log = Optional[Callable[[str], None]]


@dataclass
class Instance:
    label: int  # index into SYNTHETIC_CLASSES; COCO category_id and ADE label value are label + 1
    polygon: list  # flat [x0, y0, x1, y1, ...] in pixel coordinates, exactly what was painted
    mask: np.ndarray = field(repr=False)  # bool (H, W)
    bbox: list  # [x, y, w, h], tight box of the mask
    area: int  # mask pixel count


@dataclass
class Scene:
    image: np.ndarray = field(repr=False)  # uint8 (H, W, 3), RGB
    instances: list

    def label_map(self) -> np.ndarray:
        """uint8 (H, W): 0 = background, label + 1 inside each instance."""
        label_map = np.zeros(self.image.shape[:2], np.uint8)
        for instance in self.instances:
            label_map[instance.mask] = instance.label + 1
        return label_map


def as_hw(image_size: ImageSize) -> Tuple[int, int]:
    """An int (square) or an (H, W) pair as a (H, W) tuple of ints."""
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    height, width = (int(v) for v in image_size)
    return height, width


def shape_polygon(label: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Vertices (N, 2) of class ``label`` centred at (cx, cy) with circumradius ``radius``."""
    name = SYNTHETIC_CLASSES[label]
    if name == 'circle':
        radii = np.full(CIRCLE_VERTICES, radius)
    elif name == 'square':
        radii = np.full(4, radius)
    elif name == 'triangle':
        radii = np.full(3, radius)
    elif name == 'star':
        radii = np.tile([radius, radius * STAR_INNER_RATIO], 5)
    else:
        raise ValueError(f'no polygon for class {name!r}')
    angles = angle + 2 * np.pi * np.arange(len(radii)) / len(radii)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def rasterize_polygon(polygon: Sequence[float], height: int, width: int):
    """(bool mask, RLE) of a flat polygon, rasterised exactly as ``COCO.annToMask`` does."""
    rle = mask_utils.merge(mask_utils.frPyObjects([list(polygon)], height, width))
    return mask_utils.decode(rle).astype(bool), rle


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32 (H, W, 3) background: flat, gradient, stripes, checker or blotches."""
    kind = rng.integers(5)
    base = rng.uniform(0, 255, 3)
    other = np.clip(base + rng.uniform(-100, 100, 3), 0, 255)
    if kind == 4:  # blotches: a tiny random image upsampled smoothly
        cells = rng.integers(2, 7)
        tiny = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
        blotches = Image.fromarray(tiny).resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(blotches, np.float32)
    yy = np.arange(height, dtype=np.float32)[:, None]  # broadcast, not full (H, W) grids
    xx = np.arange(width, dtype=np.float32)[None, :]
    theta = rng.uniform(0, 2 * np.pi)
    along = xx * np.float32(np.cos(theta)) + yy * np.float32(np.sin(theta))
    period = rng.uniform(4, max(5, 0.25 * min(height, width)))
    if kind == 0:
        weight = np.zeros((height, width), np.float32)
    elif kind == 1:
        weight = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
    elif kind == 2:
        weight = ((along / period) % 1.0 < 0.5).astype(np.float32)
    else:
        weight = ((xx // period + yy // period) % 2).astype(np.float32)
    return base.astype(np.float32) + weight[..., None] * (other - base).astype(np.float32)


def _contrasting_colour(rng: np.random.Generator, under_mask: np.ndarray) -> np.ndarray:
    """A random colour that few of the background pixels under the shape resemble."""
    best, best_close = None, 2.0
    for _ in range(12):
        colour = rng.uniform(0, 255, 3)
        close = float((np.linalg.norm(under_mask - colour, axis=1) < 60).mean())
        if close < 0.05:
            return colour
        if close < best_close:
            best, best_close = colour, close
    return best


def _grow(mask: np.ndarray) -> np.ndarray:
    """``mask`` dilated by one pixel (4-neighbourhood)."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


def render_scene(rng: np.random.Generator, image_size: ImageSize = DEFAULT_IMAGE_SIZE,
                 max_instances: int = DEFAULT_MAX_INSTANCES) -> Scene:
    """Render one image with 1..max_instances non-overlapping shapes (fewer if it fills up)."""
    height, width = as_hw(image_size)
    image = _background(rng, height, width)
    blocked = np.zeros((height, width), bool)  # instance masks grown by the one-pixel margin
    instances = []
    short_side = min(height, width)
    for _ in range(rng.integers(1, max_instances + 1)):
        label = int(rng.integers(len(SYNTHETIC_CLASSES)))  # drawn once: keeps classes balanced
        for _ in range(PLACEMENT_ATTEMPTS):
            radius = max(MIN_RADIUS_PX, rng.uniform(*RADIUS_RANGE) * short_side)
            cx = rng.uniform(radius, width - radius)
            cy = rng.uniform(radius, height - radius)
            vertices = shape_polygon(label, cx, cy, radius, rng.uniform(0, 2 * np.pi))
            # Rounded first, so the stored polygon is exactly the one painted.
            polygon = np.round(vertices, 2).ravel().tolist()
            mask, rle = rasterize_polygon(polygon, height, width)
            if mask.sum() >= MIN_AREA_PX and not (mask & blocked).any():
                break
        else:
            break  # no room left for another shape
        image[mask] = _contrasting_colour(rng, image[mask])
        blocked |= _grow(mask)
        instances.append(Instance(label=label, polygon=polygon, mask=mask,
                                  bbox=[float(v) for v in mask_utils.toBbox(rle)],
                                  area=int(mask_utils.area(rle))))
    # Grey (luma) sensor noise; +0.5 makes the truncating cast round.
    noise = rng.standard_normal((height, width, 1), dtype=np.float32)
    image += np.float32(rng.uniform(0, 8)) * noise + np.float32(0.5)
    np.clip(image, 0, 255, out=image)
    return Scene(image=image.astype(np.uint8), instances=instances)


def iter_scenes(seed: int, split: str, num_images: int, image_size: ImageSize = DEFAULT_IMAGE_SIZE,
                max_instances: int = DEFAULT_MAX_INSTANCES) -> Iterator[Scene]:
    """Scenes 0..num_images-1 of ``split`` ('train' or 'val'); scene i depends on (seed, split, i).

    One generator per scene, so a scene does not depend on how many came before it.
    """
    split_code = {'train': 0, 'val': 1}[split]
    for index in range(num_images):
        rng = np.random.default_rng([seed, split_code, index])
        yield render_scene(rng, image_size, max_instances)


# ----------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------
COCO_SPLITS = {'train': 'train2017', 'val': 'val2017'}
ADE_SPLITS = {'train': 'training', 'val': 'validation'}
_COCO_IMAGE_NAME = re.compile(r'^\d{12}\.jpg$')
_ADE_FILE_NAME = re.compile(r'^ADE_(train|val)_\d{8}\.(jpg|png)$')


def _params(fmt, num_train, num_val, image_size, seed, max_instances) -> dict:
    return dict(format=fmt, version=GENERATOR_VERSION, classes=list(SYNTHETIC_CLASSES),
                num_train=int(num_train), num_val=int(num_val),
                image_size=list(as_hw(image_size)), seed=int(seed),
                max_instances=int(max_instances))


def read_meta(root) -> Optional[dict]:
    """The meta file of a generated dataset (parameters and counts), or None."""
    path = Path(root) / META_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _is_current(root: Path, params: dict, expected_files: dict) -> bool:
    meta = read_meta(root)
    if meta is None or meta.get('params') != params:
        return False
    return all(len(_own_files(root / folder, pattern)) == count
               for (folder, pattern), count in expected_files.items())


def _own_files(folder: Path, pattern: re.Pattern) -> list:
    return [p for p in folder.iterdir() if pattern.match(p.name)] if folder.is_dir() else []


def _prepare_root(root: Path, own_folders: dict, own_paths: list, overwrite: bool):
    """Delete what a previous generation wrote; refuse to touch a root that is not ours."""
    meta_path = root / META_FILE
    stale = [p for folder, pattern in own_folders.items() for p in _own_files(folder, pattern)]
    stale += [p for p in own_paths if p.exists()]
    if stale and not meta_path.exists() and not overwrite:
        raise FileExistsError(f'{root} holds dataset files that were not generated here; '
                              'pass overwrite=True to replace them')
    # The meta file goes first, so an interrupted run is never mistaken for a finished one.
    meta_path.unlink(missing_ok=True)
    for path in stale:
        path.unlink()
    for folder in own_folders:
        folder.mkdir(parents=True, exist_ok=True)


def _write_meta(root: Path, params: dict, counts: dict):
    text = json.dumps(dict(params=params, counts=counts), indent=2, sort_keys=True)
    (root / META_FILE).write_text(text + '\n')


def make_coco_dataset(root=DEFAULT_COCO_ROOT, num_train: int = DEFAULT_NUM_TRAIN,
                      num_val: int = DEFAULT_NUM_VAL, image_size: ImageSize = DEFAULT_IMAGE_SIZE,
                      seed: int = 0, max_instances: int = DEFAULT_MAX_INSTANCES,
                      overwrite: bool = False, log: Log = None) -> str:
    """Write (or keep, if current) the synthetic COCO-format instance dataset; returns ``root``."""
    root = Path(root)
    params = _params('coco', num_train, num_val, image_size, seed, max_instances)
    nums = dict(train=num_train, val=num_val)
    folders = {root / folder: _COCO_IMAGE_NAME for folder in COCO_SPLITS.values()}
    expected = {(root / COCO_SPLITS[split], _COCO_IMAGE_NAME): nums[split] for split in nums}
    ann_files = {split: root / 'annotations' / f'instances_{folder}.json'
                 for split, folder in COCO_SPLITS.items()}
    if not overwrite and _is_current(root, params, expected) and all(
            p.is_file() for p in ann_files.values()):
        if log:
            log(f'{root}: synthetic COCO dataset is up to date ({META_FILE}), nothing written')
        return str(root)
    _prepare_root(root, folders, list(ann_files.values()), overwrite)
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    categories = [dict(id=i + 1, name=name, supercategory='shape')
                  for i, name in enumerate(SYNTHETIC_CLASSES)]
    counts = {}
    for split, folder in COCO_SPLITS.items():
        images, annotations = [], []
        for index, scene in enumerate(iter_scenes(seed, split, nums[split], image_size,
                                                  max_instances)):
            image_id = index + 1
            file_name = f'{image_id:012d}.jpg'
            Image.fromarray(scene.image).save(root / folder / file_name, quality=JPEG_QUALITY)
            height, width = scene.image.shape[:2]
            images.append(dict(id=image_id, file_name=file_name, height=height, width=width))
            for instance in scene.instances:
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=image_id,
                    category_id=instance.label + 1, bbox=instance.bbox, area=instance.area,
                    iscrowd=0, segmentation=[instance.polygon]))
        coco = dict(
            info=dict(description='vir_dense synthetic shapes', version=str(GENERATOR_VERSION),
                      year=2017),  # pycocotools' loadRes copies `info`
            licenses=[], images=images, annotations=annotations, categories=categories)
        ann_files[split].write_text(json.dumps(coco, separators=(',', ':')))
        counts[split] = dict(images=len(images), instances=len(annotations))
        if log:
            log(f'{root / folder}: {len(images)} images, {len(annotations)} instances '
                f'-> {ann_files[split]}')
    _write_meta(root, params, counts)
    return str(root)


def make_ade20k_dataset(root=DEFAULT_ADE_ROOT, num_train: int = DEFAULT_NUM_TRAIN,
                        num_val: int = DEFAULT_NUM_VAL, image_size: ImageSize = DEFAULT_IMAGE_SIZE,
                        seed: int = 0, max_instances: int = DEFAULT_MAX_INSTANCES,
                        overwrite: bool = False, log: Log = None) -> str:
    """Write (or keep, if current) the synthetic ADE20K-format semantic dataset; returns ``root``.

    Label maps hold 0 for background and 1..K for ``SYNTHETIC_CLASSES``: load them with
    ``reduce_zero_label=True`` (background becomes 255 and is ignored).
    """
    root = Path(root)
    params = _params('ade20k', num_train, num_val, image_size, seed, max_instances)
    nums = dict(train=num_train, val=num_val)
    folders = {root / kind / folder: _ADE_FILE_NAME
               for kind in ('images', 'annotations') for folder in ADE_SPLITS.values()}
    expected = {(root / kind / ADE_SPLITS[split], _ADE_FILE_NAME): nums[split]
                for kind in ('images', 'annotations') for split in nums}
    if not overwrite and _is_current(root, params, expected):
        if log:
            log(f'{root}: synthetic ADE20K dataset is up to date ({META_FILE}), nothing written')
        return str(root)
    _prepare_root(root, folders, [], overwrite)
    counts = {}
    for split, folder in ADE_SPLITS.items():
        num_instances = 0
        for index, scene in enumerate(iter_scenes(seed, split, nums[split], image_size,
                                                  max_instances)):
            stem = f'ADE_{split}_{index + 1:08d}'
            Image.fromarray(scene.image).save(root / 'images' / folder / f'{stem}.jpg',
                                              quality=JPEG_QUALITY)
            label_png = Image.fromarray(scene.label_map())  # uint8 (H, W) -> mode 'L'
            label_png.save(root / 'annotations' / folder / f'{stem}.png')
            num_instances += len(scene.instances)
        counts[split] = dict(images=nums[split], instances=num_instances)
        if log:
            log(f'{root / "images" / folder}: {nums[split]} images, label maps in '
                f'{root / "annotations" / folder}')
    _write_meta(root, params, counts)
    return str(root)
