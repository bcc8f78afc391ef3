# 1x schedule: 12 epochs, lr x0.1 after epochs 8 and 11, linear warm-up over 250 iterations.
#
# The lr is for a TOTAL batch of 16 images (e.g. 8 GPUs x 2). With another total batch either
# scale the lr linearly yourself or pass --auto-scale-lr to tools/train.py, which multiplies
# it by (GPUs x batch_size per GPU) / auto_scale_lr.base_batch_size.
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]

# AdamW with ViTDet's settings and layer-wise lr decay (block i of 12 gets
# lr * 0.7 ** (13 - (i + 1)); embeddings the smallest, neck and heads the full lr).
# `--amp` turns this into an AmpOptimWrapper (fp16 with dynamic loss scaling on GPU; bf16
# autocast on CPU).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
    constructor='ViRLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=12, decay_rate=0.7))

auto_scale_lr = dict(enable=False, base_batch_size=16)
