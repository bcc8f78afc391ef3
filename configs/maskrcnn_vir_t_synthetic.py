# The demo: Mask R-CNN + a small ViR on the embedded synthetic shapes (COCO format), CPU-sized.
#
#   python tools/dataset_converters/make_synthetic_data.py coco  # -> data/synthetic_coco/, 256²
#   python tools/train.py configs/maskrcnn_vir_t_synthetic.py    # or: make demo
#
# Scaled down so that 2 CPU cores train it in about 10 minutes: ViR with D=192, 6 blocks,
# 3 heads, patch 8 (images resized to 160x160 -> a 20x20 token grid), 128-channel FPN and
# lighter RoI heads. Random init (no pretrained ViR weights exist), hence a larger lr than the
# COCO recipe, no layer decay (it protects pretrained lower layers, there are none), and
# LayerScale starting at 0.1 rather than 1e-5 so the blocks contribute from the start.
#
# Unlike the COCO configs (ViTDet's simple pyramid from the last map), the demo adds the
# backbone's conv spatial prior (a stride-4 stem beside the ViR, as ViT-Adapter does) and
# fuses it with the ViR map in a standard FPN. Measured here (4 epochs, docs/detection.md):
# without it, randomly initialised plain backbones (ViR, and a ResNet-18 cut at stride 16)
# reach bbox mAP <= 0.004 through the simple pyramid, with it ViR reaches 0.08: masks and
# boxes need pixel-level detail that a plain backbone only learns to keep over long schedules.
_base_ = [
    '_base_/models/mask_rcnn_vir.py',
    '_base_/datasets/synthetic_coco.py',
    '_base_/default_runtime_det.py',
]

num_classes = 4  # len(vir_dense.datasets.synthetic.SYNTHETIC_CLASSES)
channels = 128
depth = 6
norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)

model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=192, num_layers=depth, num_heads=3),
        img_size=160,
        patch_size=8,
        out_indices=(depth - 1, ),
        drop_path_rate=0.0,
        init_values=0.1,
        spatial_prior=dict(channels=64),
        init_cfg=None),
    # Backbone maps: the spatial prior at stride 4, the ViR's last block at stride 8 (patch 8);
    # the FPN adds strides 16, 32 and 64 by max-pooling (the pyramid RPN and RoI heads expect).
    neck=dict(_delete_=True, type='FPN', in_channels=[64, 192], out_channels=channels,
              num_outs=5),
    rpn_head=dict(
        in_channels=channels,
        feat_channels=channels,
        # Shapes are 20-64 px across at 160 px: anchors of 16..256 px over strides 4..64.
        anchor_generator=dict(scales=[4], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=channels),
        bbox_head=dict(
            _delete_=True,
            type='Shared2FCBBoxHead',
            in_channels=channels,
            fc_out_channels=256,
            roi_feat_size=7,
            num_classes=num_classes,
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder',
                target_means=[0.0, 0.0, 0.0, 0.0],
                target_stds=[0.1, 0.1, 0.2, 0.2]),
            reg_class_agnostic=False,
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
        mask_roi_extractor=dict(out_channels=channels),
        mask_head=dict(
            num_convs=2,
            in_channels=channels,
            conv_out_channels=channels,
            norm_cfg=norm_cfg,
            num_classes=num_classes)),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=128)),
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(max_per_img=20)))

max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=4)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs,
         eta_min_ratio=0.01, convert_to_iter_based=True),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=4e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='ViRLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=depth, decay_rate=1.0),
    clip_grad=dict(max_norm=5.0, norm_type=2))
# The lr above is for batch 4 (one process); --auto-scale-lr scales it for more processes.
auto_scale_lr = dict(enable=False, base_batch_size=4)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=4, max_keep_ckpts=2))
log_processor = dict(type='LogProcessor', window_size=10, by_epoch=True)
