"""Python inference helpers (detection here; segmentation helpers in apis/seg.py when present)."""
import importlib.util

from .det import (build_test_pipeline, build_visualizer, coco_category_ids, coco_image_ids,
                  inference_detector, init_detector, result_to_coco)
from .inputs import IMAGE_SUFFIXES, collect_images, read_rgb

__all__ = ['IMAGE_SUFFIXES', 'collect_images', 'read_rgb', 'init_detector', 'inference_detector',
           'build_test_pipeline', 'build_visualizer', 'coco_category_ids', 'coco_image_ids',
           'result_to_coco']

if importlib.util.find_spec(f'{__name__}.seg') is not None:  # added by the segmentation side
    from . import seg  # noqa: F401
