# Mask R-CNN + ViR-B/16 (D=768, 12 blocks, 12 heads), COCO 1x.
# ViTDet-B settings: drop path 0.1, layer decay 0.7 over 12 blocks, AdamW lr 1e-4 wd 0.1 for a
# total batch of 16 (8 GPUs x 2). Gradient checkpointing (with_cp) trades compute for memory:
# a 1333x800 image is ~4200 tokens, and parallel retention holds a tokens x tokens map per head.
# Backbone weights: pretrained/vir_base_patch16_224.pth, e.g. converted from
# timm/deit_base_patch16_224.fb_in1k with tools/model_converters/convert_checkpoint.py --arch base
# (no ImageNet ViR weights exist).
_base_ = ['./maskrcnn_vir_s_coco.py']

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.1,
        with_cp=True,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/vir_base_patch16_224.pth')),
    neck=dict(in_channels=[768]))

optim_wrapper = dict(paramwise_cfg=dict(num_layers=12, decay_rate=0.7))
