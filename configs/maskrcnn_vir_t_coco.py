# Mask R-CNN + ViR-T/16 (D=192, 12 blocks, 3 heads; our variant for fast experiments), COCO 1x.
# Total batch 16 (8 GPUs x 2), lr 1e-4, layer decay 0.7 over 12 blocks.
# Backbone weights: pretrained/vir_tiny_patch16_224.pth, e.g. converted from
# timm/deit_tiny_patch16_224.fb_in1k with tools/model_converters/convert_checkpoint.py --arch tiny
# (no ImageNet ViR weights exist).
_base_ = ['./maskrcnn_vir_s_coco.py']

model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/vir_tiny_patch16_224.pth')),
    neck=dict(in_channels=[192]))
