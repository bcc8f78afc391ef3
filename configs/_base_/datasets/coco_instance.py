# COCO 2017 instance segmentation, mmdet's standard "1x" pipeline, inherited unchanged from the
# installed mmdet package.
#
# Expected layout (override the root with `--cfg-options data_root=/path/to/coco/`; the tools
# carry a new data_root into every dataloader and the evaluators):
#   data/coco/annotations/instances_{train,val}2017.json
#   data/coco/{train,val}2017/*.jpg
#
# Pipeline: shorter side 800 / longer side <= 1333, keep ratio, horizontal flip; annotations
# are loaded after the resize in the test pipeline (the metric reads the original-size ones).
# Batch 2 per GPU: 8 GPUs x 2 images = total batch 16 (the lr in the schedule is for 16).
# We use this rather than ViTDet's large-scale jitter (LSJ, 1024x1024 crops of 0.1-2.0x
# rescaled images): LSJ pays off over 50-100 epoch schedules, the 1x/3x recipes of the
# small-model marks (ViT-Adapter-S, Vision-RWKV-S) use this pipeline, and it is
# what they compare to.
_base_ = 'mmdet::_base_/datasets/coco_instance.py'
