# UperNet + ViR-T (D=192, 12 blocks, 3 heads; our tiny variant) on ADE20K, 512x512 crops,
# 160k iterations at a total batch of 16. Recipe and choices: docs/segmentation.md.
_base_ = [
    './_base_/models/upernet_vir.py',
    './_base_/datasets/ade20k.py',
    './_base_/default_runtime_seg.py',
    './_base_/schedules/seg_schedule_160k.py',
]
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/vir_tiny_patch16_224.pth')),
    # a narrower head for the narrower trunk (UperNet cost at stride 4 scales with channels)
    decode_head=dict(in_channels=[192, 192, 192, 192], channels=256, num_classes=150),
    auxiliary_head=dict(in_channels=192, channels=128, num_classes=150))
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='ViRLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=12, decay_rate=0.75))
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
