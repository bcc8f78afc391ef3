# Runtime shared by every detection config (mmengine Runner settings).
#
# Importing `vir_dense` registers the ViR backbone, the SimpleFeaturePyramid neck and the
# layer-decay optimizer constructor in mmdet's registries; `default_scope='mmdet'` makes the
# runner (and tools/train.py, tools/test.py) resolve every `type=` in mmdet first.
custom_imports = dict(imports=['vir_dense'], allow_failed_imports=False)
default_scope = 'mmdet'

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'))

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # tools/train.py switches to 'gloo' when CUDA is not available (CPU runs).
    dist_cfg=dict(backend='nccl'))

# LocalVisBackend writes <work_dir>/<timestamp>/vis_data/scalars.json (the loss curves).
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True)

log_level = 'INFO'
load_from = None
resume = False
