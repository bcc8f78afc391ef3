# Mask R-CNN on a plain ViR backbone, the ViTDet way: the backbone's last stride-16 map only,
# turned into strides 4/8/16/32(/64) by SimpleFeaturePyramid (deconvolutions up, max-pool
# down), then mmdet's standard RPN and RoI heads. Inherits mmdet's own Mask R-CNN base from the
# installed package (data preprocessor, RPN, RoI heads, train/test settings) and states only
# what differs: the backbone, the neck and the normalised RoI heads.
#
# Choices (see docs/detection.md):
# - bidirectional_2d mask: every patch sees the whole image (a causal mask would leave the
#   top-left patches almost blind), weighted by gamma^(|dx|+|dy|).
# - RoI heads: Shared4Conv1FCBBoxHead and a 4-conv mask head with GroupNorm (mmdet's "GN"
#   heads, as ViTDet uses normalised 4conv1fc heads; ViTDet's LN2d lives in an mmdet project
#   that is not importable, GroupNorm runs everywhere incl. CPU).
# - Inputs are padded to a multiple of 32 (mmdet's default, not ViTDet's fixed 1024x1024
#   canvas): with the standard 1333x800 pipeline that wastes fewer tokens, and retention's cost
#   grows with them. The ImageNet mean/std of mmdet's base are what the timm DeiT/ViT weights
#   that warm-start ViR expect.
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'

norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)

model = dict(
    backbone=dict(
        _delete_=True,  # replaces mmdet's ResNet-50 wholesale
        type='ViR',
        arch='small',
        img_size=224,
        patch_size=16,
        out_indices=(11, ),
        pyramid=None,
        mask='bidirectional_2d',
        retention_mode='auto',  # parallel up to 2048 tokens, chunkwise above (same outputs)
        chunk_size=256,  # cells per chunkwise tile (16 x 16)
        drop_path_rate=0.1,
        with_cp=False,
        # No ImageNet ViR weights exist: make a warm start from timm ViT/DeiT weights with
        # tools/model_converters/convert_checkpoint.py, or train from scratch with
        # --cfg-options model.backbone.init_cfg=None
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/vir_small_patch16_224.pth')),
    neck=dict(
        _delete_=True,  # replaces mmdet's FPN over four ResNet stages
        type='SimpleFeaturePyramid',
        in_channels=[384],
        out_channels=256,
        scale_factors=(4.0, 2.0, 1.0, 0.5),
        num_outs=5),
    roi_head=dict(
        # mmdet's Shared2FCBBoxHead becomes the 4conv1fc head with GroupNorm; every other key
        # of the bbox head (coder, losses, 80 classes) is mmdet's.
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg)))
