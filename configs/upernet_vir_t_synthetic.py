# UperNet + ViR-T on the embedded synthetic shapes (ADE20K layout, 4 classes), 128x128 crops:
# a from-scratch recipe that trains and evaluates on a CPU. Write the data first:
#   python tools/dataset_converters/make_synthetic_data.py ade20k
#   python tools/train.py configs/upernet_vir_t_synthetic.py
_base_ = [
    './_base_/models/upernet_vir.py',
    './_base_/datasets/synthetic_ade20k.py',
    './_base_/default_runtime_seg.py',
    './_base_/schedules/seg_schedule_160k.py',
]
crop_size = (128, 128)
num_classes = 4  # vir_dense.datasets.synthetic.SYNTHETIC_CLASSES
norm_cfg = dict(type='BN', requires_grad=True)  # single process, CPU: plain BatchNorm
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='tiny',
        img_size=128,
        drop_path_rate=0.0,
        init_cfg=None),  # from scratch: no pretrained ViR weights exist
    decode_head=dict(in_channels=[192, 192, 192, 192], channels=128, num_classes=num_classes,
                     norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=192, channels=64, num_classes=num_classes,
                        norm_cfg=norm_cfg),
    test_cfg=dict(_delete_=True, mode='whole'))
# From scratch: a higher lr and no layer-wise decay (decay_rate 1.0 keeps the constructor's
# no-weight-decay groups for norms, biases, LayerScale and embeddings).
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='ViRLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=12, decay_rate=1.0),
    clip_grad=dict(max_norm=1.0, norm_type=2))
max_iters = 1000  # ~1-1.5 h on 2 CPU cores (2-5 s per iteration)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=50, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=250)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=250, max_keep_ckpts=2,
                    save_best='mIoU', rule='greater'))
env_cfg = dict(cudnn_benchmark=False)
auto_scale_lr = dict(enable=False, base_batch_size=8)
