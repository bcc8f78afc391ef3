# Mask R-CNN + ViR-T/16 + conv spatial prior + FPN, COCO 2017, 1x: configs/maskrcnn_vir_s_sp_coco.py
# with the tiny ViR (D=192, 12 blocks, 3 heads) of configs/maskrcnn_vir_t_coco.py.
# Pretrained ViR-T: pretrained/vir_tiny_patch16_224.pth (see that config), or random init with
#   --cfg-options model.backbone.init_cfg=None
_base_ = ['./maskrcnn_vir_s_sp_coco.py']

model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/vir_tiny_patch16_224.pth')),
    neck=dict(in_channels=[64, 128, 192, 192]))
