"""Python inference: one build-and-load path (``build.init_model``) for detection and
segmentation, then ``detect_images`` / ``segment_images`` for files and folders."""
from .build import init_model
from .det import (build_test_pipeline, build_visualizer, coco_category_ids, coco_image_ids,
                  detect_images, inference_detector, init_detector, result_to_coco)
from .inputs import IMAGE_SUFFIXES, ImagesReport, collect_images, read_rgb
from .seg import configure_inference, init_segmentor, segment_array, segment_images

__all__ = ['IMAGE_SUFFIXES', 'ImagesReport', 'collect_images', 'read_rgb', 'init_model',
           'init_detector', 'inference_detector', 'detect_images', 'build_test_pipeline',
           'build_visualizer', 'coco_category_ids', 'coco_image_ids', 'result_to_coco',
           'init_segmentor', 'configure_inference', 'segment_array', 'segment_images']
