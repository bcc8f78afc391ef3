# UperNet with a ViR-S backbone (mmseg's ViT/BEiT/MAE layout): four taps of the isotropic
# trunk (blocks 3, 5, 7, 11) rescaled x4/x2/x1/x0.5 inside the backbone (`pyramid='taps'`) to
# strides 4/8/16/32, UPerHead on all four, auxiliary FCNHead on the stride-16 map.
#
# Heads use SyncBN as a multi-GPU user expects. Single-process runs (tools/train.py on CPU or
# one GPU, tools/infer_seg.py, vir_dense.apis.seg) revert it to BatchNorm: mmengine's runner
# does so when not distributed, and vir_dense.apis.seg does it when building a model.
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    # ViR convention (the authors' ImageNet recipe): mean = std = 0.5 on [0, 1] pixels.
    mean=[127.5, 127.5, 127.5],
    std=[127.5, 127.5, 127.5],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(512, 512))  # training crops are padded to this
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type='ViR',
        arch='small',
        patch_size=16,
        img_size=224,  # grid of the pretrained position embedding; resized to each input
        out_indices=(3, 5, 7, 11),
        pyramid='taps',
        # every patch sees its whole neighbourhood (all four quadrants), weighted by
        # gamma^(|dx|+|dy|); still has linear-memory chunkwise/recurrent forms
        mask='bidirectional_2d',
        # parallel up to two chunks of tokens (512² crops), chunkwise above (whole-image
        # inference at any size): the same function either way
        retention_mode='auto',
        chunk_size=1024,
        drop_path_rate=0.1,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/vir_small_patch16_224.pth')),
    decode_head=dict(
        type='UPerHead',
        in_channels=[384, 384, 384, 384],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=384,
        in_index=2,  # the stride-16 map (block 7)
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    # Evaluation protocol of the peers' ViT/DeiT/BEiT UperNet numbers: 512 windows, stride 341.
    # For whole-image inference at any resolution use tools/infer_seg.py --retention-mode
    # chunkwise (or test_cfg=dict(mode='whole')).
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
