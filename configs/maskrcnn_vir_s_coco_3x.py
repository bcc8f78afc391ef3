# Mask R-CNN + ViR-S/16, COCO 3x (36 epochs) with multi-scale training: the shorter side is
# drawn from [480, 800] per image (longer side <= 1333), tested at 1333x800.
# Total batch 16 (8 GPUs x 2), lr 1e-4 (see maskrcnn_vir_s_coco.py for weights and scaling).
_base_ = [
    '_base_/models/mask_rcnn_vir.py',
    '_base_/datasets/coco_instance.py',
    '_base_/schedules/det_schedule_3x.py',
    '_base_/default_runtime_det.py',
]

backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=[(1333, 480), (1333, 800)], keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
