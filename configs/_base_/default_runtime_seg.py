# Runtime defaults for the segmentation configs: mmseg's default runtime (default_scope='mmseg',
# SegLocalVisualizer, iteration-based log processor, SegTTAModel), plus importing `vir_dense`,
# which registers the ViR backbone and the layer-decay optimizer constructor in mmseg's
# registries.
_base_ = 'mmseg::_base_/default_runtime.py'

custom_imports = dict(imports=['vir_dense'], allow_failed_imports=False)
