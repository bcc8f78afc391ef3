# The embedded synthetic shapes dataset in COCO layout (vir_dense/datasets/synthetic.py).
# Write it with:  python tools/dataset_converters/make_synthetic_data.py coco
# (-> data/synthetic_coco/)
#
# 240 train / 60 val images of 256x256 with 1-5 shapes each; read unchanged by mmdet's
# CocoDataset and CocoMetric. The class names must equal
# vir_dense.datasets.synthetic.SYNTHETIC_CLASSES (configs cannot import Python;
# tests/test_det_configs.py checks that they agree).
_base_ = './coco_instance.py'

data_root = 'data/synthetic_coco/'
metainfo = dict(
    classes=('circle', 'square', 'triangle', 'star'),
    palette=[(220, 20, 60), (0, 130, 200), (60, 180, 75), (255, 190, 0)])

# Images are stored at 256x256 and trained smaller to keep CPU runs short.
img_scale = (160, 160)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]

# Everything else (layout, sampler, CocoMetric bbox + segm) is COCO's, from coco_instance.py.
loader = dict(batch_size=4, num_workers=0, persistent_workers=False)
train_dataloader = dict(
    **loader,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline,
                 filter_cfg=dict(min_size=8)))
val_dataloader = dict(
    **loader,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
