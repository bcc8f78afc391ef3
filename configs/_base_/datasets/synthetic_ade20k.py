# The embedded synthetic shapes dataset in ADE20K layout (vir_dense.datasets.synthetic):
# write it with `python tools/dataset_converters/make_synthetic_data.py ade20k` (240 train /
# 60 val images of 256x256). Label maps hold 0 for background and 1..4 for the shapes;
# reduce_zero_label turns background into 255 (ignored), as for ADE20K. ADE20K's pipeline at
# a quarter of its scale.
_base_ = ['./ade20k.py']
dataset_type = 'BaseSegDataset'
data_root = 'data/synthetic_ade'
# Spelled out (configs should not import project code); a test checks that they equal
# vir_dense.datasets.synthetic.SYNTHETIC_CLASSES / SYNTHETIC_PALETTE.
metainfo = dict(
    classes=('circle', 'square', 'triangle', 'star'),
    palette=[[220, 20, 60], [0, 130, 200], [60, 180, 75], [255, 190, 0]])
crop_size = (128, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(256, 256), ratio_range=(0.5, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 256), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
# BaseSegDataset needs the suffixes and reduce_zero_label that ADE20KDataset has built in.
train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    dataset=dict(type=dataset_type, data_root=data_root, metainfo=metainfo, img_suffix='.jpg',
                 seg_map_suffix='.png', reduce_zero_label=True, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=2,
    dataset=dict(type=dataset_type, data_root=data_root, metainfo=metainfo, img_suffix='.jpg',
                 seg_map_suffix='.png', reduce_zero_label=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
