# Runtime shared by every detection config: mmdet's default runtime (hooks, visualizer, log
# processor, nccl; tools/train.py switches to 'gloo' when CUDA is not available), plus:
#
# Importing `vir_dense` registers the ViR backbone, the SimpleFeaturePyramid neck and the
# layer-decay optimizer constructor in mmdet's registries; `default_scope='mmdet'` (mmdet's)
# makes the runner (and tools/train.py, tools/test.py) resolve every `type=` in mmdet first.
# LocalVisBackend writes <work_dir>/<timestamp>/vis_data/scalars.json (the loss curves).
_base_ = 'mmdet::_base_/default_runtime.py'

custom_imports = dict(imports=['vir_dense'], allow_failed_imports=False)

default_hooks = dict(checkpoint=dict(max_keep_ckpts=3))
