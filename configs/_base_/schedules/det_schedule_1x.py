# 1x schedule: mmdet's (12 epochs, lr x0.1 after epochs 8 and 11, validation every epoch), with
# ViTDet's optimizer and a shorter warm-up (250 iterations rather than 500).
#
# The lr is for a TOTAL batch of 16 images (e.g. 8 GPUs x 2). With another total batch either
# scale the lr linearly yourself or pass --auto-scale-lr to tools/train.py, which multiplies
# it by (GPUs x batch_size per GPU) / auto_scale_lr.base_batch_size (16, mmdet's).
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'

# A list replaces the base's list whole; restated with only the warm-up changed.
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]

# AdamW with ViTDet's settings and layer-wise lr decay (block i of 12 gets
# lr * 0.7 ** (13 - (i + 1)); embeddings the smallest, neck and heads the full lr).
# `--amp` turns this into an AmpOptimWrapper (fp16 with dynamic loss scaling on GPU; bf16
# autocast on CPU).
optim_wrapper = dict(
    optimizer=dict(_delete_=True,  # mmdet's SGD has a momentum AdamW does not take
                   type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
    constructor='ViRLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=12, decay_rate=0.7))
