# 3x schedule: 36 epochs, lr x0.1 after epochs 27 and 33, linear warm-up over 250 iterations.
# lr for a total batch of 16 (see det_schedule_1x.py for scaling and --amp).
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=36, val_interval=3)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(type='MultiStepLR', begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1),
]

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
    constructor='ViRLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=12, decay_rate=0.7))

auto_scale_lr = dict(enable=False, base_batch_size=16)
