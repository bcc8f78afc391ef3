# UperNet with a ViR-S backbone (mmseg's ViT/BEiT/MAE layout): four taps of the isotropic
# trunk (blocks 3, 5, 7, 11) rescaled x4/x2/x1/x0.5 to strides 4/8/16/32, UPerHead on all
# four, auxiliary FCNHead on the stride-16 map (block 7).
#
# Inherits mmseg's MAE UperNet base from the installed package: its heads already have ViT-S
# widths (384-channel inputs, 512/256 channels, SyncBN, the losses); what differs is below.
# Heads use SyncBN as a multi-GPU user expects. Single-process runs (tools/train.py on CPU or
# one GPU, tools/infer_seg.py, vir_dense.apis.seg) revert it to BatchNorm: mmengine's runner
# does so when not distributed, and vir_dense.apis.seg does it when building a model.
_base_ = 'mmseg::_base_/models/upernet_mae.py'

data_preprocessor = dict(
    # ViR convention (the authors' ImageNet recipe): mean = std = 0.5 on [0, 1] pixels.
    mean=[127.5, 127.5, 127.5],
    std=[127.5, 127.5, 127.5],
    size=(512, 512))  # training crops are padded to this
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        _delete_=True,  # replaces mmseg's MAE ViT-B wholesale
        type='ViR',
        arch='small',
        patch_size=16,
        img_size=224,  # grid of the pretrained position embedding; resized to each input
        out_indices=(3, 5, 7, 11),
        # the x4/x2/x1/x0.5 rescaling lives in the backbone, so mmseg's Feature2Pyramid neck
        # is dropped below (neck=None: mmengine has no way to delete an inherited key)
        pyramid='taps',
        # every patch sees its whole neighbourhood (all four quadrants), weighted by
        # gamma^(|dx|+|dy|); still has linear-memory chunkwise/recurrent forms
        mask='bidirectional_2d',
        # parallel up to 2048 tokens (512² crops), chunkwise above (whole-image
        # inference at any size): the same function either way
        retention_mode='auto',
        chunk_size=256,  # cells per chunkwise tile (16 x 16)
        drop_path_rate=0.1,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/vir_small_patch16_224.pth')),
    neck=None,
    decode_head=dict(num_classes=150),  # ADE20K (mmseg's MAE base has Cityscapes' 19)
    auxiliary_head=dict(num_classes=150),
    # Evaluation protocol of the peers' ViT/DeiT/BEiT UperNet numbers: 512 windows, stride 341.
    # For whole-image inference at any resolution use tools/infer_seg.py --retention-mode
    # chunkwise (or test_cfg=dict(mode='whole')).
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
