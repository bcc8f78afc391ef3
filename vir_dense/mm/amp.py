"""`CPUAmpOptimWrapper`: mixed precision for ``--amp`` on a machine without CUDA.

mmengine's AmpOptimWrapper asserts a GPU. On CPU, autocast runs in bfloat16, which keeps
float32's exponent range, so no loss scaling is needed.
"""
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS


def _to_float(out):
    if torch.is_tensor(out):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float(o) for o in out)
    return out


@OPTIM_WRAPPERS.register_module(force=True)
class CPUAmpOptimWrapper(OptimWrapper):
    """Autocast covers the backbone and the neck, where the dense FLOPs are; their outputs go
    back to float32 because mmcv's CPU kernels for the heads (nms, RoIAlign) take float32 only.
    A model without backbone/neck runs wholly under autocast."""

    def __init__(self, dtype='bfloat16', **kwargs):
        super().__init__(**kwargs)
        self.cast_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype

    @contextmanager
    def optim_context(self, model):
        module = getattr(model, 'module', model)
        parts = [getattr(module, name, None) for name in ('backbone', 'neck')]
        parts = [part for part in parts if isinstance(part, torch.nn.Module)]
        if not parts:
            with super().optim_context(model), torch.autocast('cpu', dtype=self.cast_dtype):
                yield
            return
        active, handles = [], []

        def enter(mod, args):
            active.append(torch.autocast('cpu', dtype=self.cast_dtype))
            active[-1].__enter__()

        def leave(mod, args, out):
            active.pop().__exit__(None, None, None)
            return _to_float(out)

        for part in parts:
            handles.append(part.register_forward_pre_hook(enter))
            handles.append(part.register_forward_hook(leave))
        try:
            with super().optim_context(model):
                yield
        finally:
            for handle in handles:
                handle.remove()
            while active:  # a forward that raised inside an autocast region
                active.pop().__exit__(None, None, None)
