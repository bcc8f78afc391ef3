# 3x schedule: 36 epochs, lr x0.1 after epochs 27 and 33; the 1x schedule's warm-up, optimizer
# (AdamW, layer decay) and lr scaling for a total batch of 16 (see det_schedule_1x.py).
_base_ = './det_schedule_1x.py'

train_cfg = dict(max_epochs=36, val_interval=3)

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(type='MultiStepLR', begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
