"""Datasets that ship with the project (no download needed)."""
from .synthetic import (DEFAULT_ADE_ROOT, DEFAULT_COCO_ROOT, DEFAULT_IMAGE_SIZE,
                        DEFAULT_MAX_INSTANCES, DEFAULT_NUM_TRAIN, DEFAULT_NUM_VAL,
                        GENERATOR_VERSION, META_FILE, SYNTHETIC_CLASSES, SYNTHETIC_METAINFO,
                        SYNTHETIC_PALETTE, Instance, Scene, iter_scenes, make_ade20k_dataset,
                        make_coco_dataset, rasterize_polygon, read_meta, render_scene,
                        shape_polygon)

__all__ = [
    'SYNTHETIC_CLASSES', 'SYNTHETIC_PALETTE', 'SYNTHETIC_METAINFO', 'GENERATOR_VERSION',
    'META_FILE', 'DEFAULT_COCO_ROOT', 'DEFAULT_ADE_ROOT', 'DEFAULT_NUM_TRAIN', 'DEFAULT_NUM_VAL',
    'DEFAULT_IMAGE_SIZE', 'DEFAULT_MAX_INSTANCES', 'Instance', 'Scene', 'render_scene',
    'iter_scenes', 'shape_polygon', 'rasterize_polygon', 'make_coco_dataset',
    'make_ade20k_dataset', 'read_meta',
]
