# UperNet + ViR-B (D=768, 12 blocks, 12 heads) on ADE20K, 512x512 crops, 160k iterations at
# a total batch of 16. The MAE-B UperNet recipe of mmseg (lr 1e-4, layer decay 0.65, heads of
# 768 channels, drop path 0.1). Recipe and choices: docs/segmentation.md.
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
        arch='base',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/vir_base_patch16_224.pth')),
    decode_head=dict(in_channels=[768, 768, 768, 768], channels=768, num_classes=150),
    auxiliary_head=dict(in_channels=768, channels=256, num_classes=150))
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='ViRLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=12, decay_rate=0.65))
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
