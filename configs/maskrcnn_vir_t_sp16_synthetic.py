# The demo at patch 16: the COCO recipe with the spatial prior (configs/maskrcnn_vir_*_sp_coco.py)
# scaled to the embedded synthetic shapes, to compare with the patch-8 demo
# (configs/maskrcnn_vir_t_synthetic.py) at the same budget; results in docs/detection.md.
#
#   python tools/dataset_converters/make_synthetic_data.py coco
#   python tools/train.py configs/maskrcnn_vir_t_sp16_synthetic.py
#
# Everything is the demo's (ViR D=192, 6 blocks, random init, 160x160 images, 12 epochs, lr,
# heads) except the backbone's maps: the spatial prior with two stages (strides 4 and 8:
# 64 and 128 channels), the ViR at patch 16 (a 10x10 token grid, stride 16) and a max-pool of
# its map (stride 32); mmdet's FPN fuses the four and adds stride 64 by max-pooling.
_base_ = ['./maskrcnn_vir_t_synthetic.py']

model = dict(
    backbone=dict(
        patch_size=16,
        spatial_prior=dict(channels=64, num_stages=2),
        extra_pool=True),
    neck=dict(in_channels=[64, 128, 192, 192]))
