# UperNet + ViR-T (D=192, 12 blocks, 3 heads; our tiny variant) on ADE20K, 512x512 crops,
# 160k iterations at a total batch of 16: the ViR-S recipe with a narrower trunk and head.
_base_ = ['./upernet_vir_s_ade20k.py']
model = dict(
    backbone=dict(
        arch='tiny',
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/vir_tiny_patch16_224.pth')),
    # a narrower head for the narrower trunk (UperNet cost at stride 4 scales with channels)
    decode_head=dict(in_channels=[192, 192, 192, 192], channels=256),
    auxiliary_head=dict(in_channels=192, channels=128))
