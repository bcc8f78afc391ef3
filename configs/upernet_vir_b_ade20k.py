# UperNet + ViR-B (D=768, 12 blocks, 12 heads) on ADE20K, 512x512 crops, 160k iterations at
# a total batch of 16. The MAE-B UperNet recipe of mmseg (lr 1e-4, layer decay 0.65, heads of
# 768 channels, drop path 0.1). Recipe and choices: docs/segmentation.md.
_base_ = ['./upernet_vir_s_ade20k.py']
model = dict(
    backbone=dict(
        arch='base',
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/vir_base_patch16_224.pth')),
    decode_head=dict(in_channels=[768, 768, 768, 768], channels=768),
    auxiliary_head=dict(in_channels=768))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.65))
