# 160k iterations, AdamW with ViR layer-wise lr decay, 1500-iter linear warm-up then poly
# (power 1.0) decay to 0: the MAE/BEiT UperNet recipe of mmseg, at a total batch of 16
# (8 GPUs x 2 images). The model configs set lr and decay_rate per variant.
#
# Not inherited from mmseg::_base_/schedules/schedule_160k.py: that file also defines a
# top-level `optimizer` (SGD) beside optim_wrapper.optimizer, and mmengine cannot delete an
# inherited variable, so every config would carry a stale SGD optimizer that disagrees with
# the one used; its scheduler, optimizer and checkpoint hook all differ from ours anyway.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='ViRLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=12, decay_rate=0.75),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=160000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=16000, max_keep_ckpts=3,
                    save_best='mIoU', rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'),
)
# The lr above is for a total batch of 16; `--auto-scale-lr` scales it linearly to yours.
auto_scale_lr = dict(enable=False, base_batch_size=16)
