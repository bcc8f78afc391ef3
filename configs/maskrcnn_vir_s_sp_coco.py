# Mask R-CNN + ViR-S/16 + conv spatial prior + FPN, COCO 2017, 1x: the recipe that learns from
# random init (docs/detection.md, "The spatial-prior recipe"); otherwise configs/maskrcnn_vir_s_coco.py.
#
#   bash tools/dist_train.sh configs/maskrcnn_vir_s_sp_coco.py 8             # total batch 16
#   python tools/train.py configs/maskrcnn_vir_s_sp_coco.py --cfg-options model.backbone.init_cfg=None
#
# Backbone maps: the spatial prior's stem (stride 4, 64 channels) and one stride-2 conv stage
# (stride 8, 128 channels), the ViR's last block (stride 16) and its max-pool (stride 32).
# mmdet's FPN fuses the four (top-down) and adds stride 64 by max-pooling, so the RPN
# anchors (strides 4..64) and RoI extractors (4..32) stay those of the simple-pyramid recipe.
# The spatial prior is new random weight at the full lr (the layer decay only touches the
# ViR's embeddings and blocks); a pretrained ViR file loads into the trunk as before.
# GroupNorm in the spatial prior: 2 images per GPU are too few for BatchNorm statistics.
_base_ = ['./maskrcnn_vir_s_coco.py']

model = dict(
    backbone=dict(
        spatial_prior=dict(channels=64, num_stages=2,
                           norm_cfg=dict(type='GN', num_groups=16, requires_grad=True)),
        extra_pool=True),
    neck=dict(_delete_=True, type='FPN', in_channels=[64, 128, 384, 384], out_channels=256,
              num_outs=5))
