"""A workspace that eager chunkwise calls and ViR blocks share while a model runs its blocks.

Each tiled call writes its tile scores and then its states into one large buffer, gathers keys
and values into another and sums its output in cells in a third (chunkwise.py, `_Reuse`); a
ViR block in inference writes its qkv projection and its MLP's hidden tokens into fresh
tensors too. Allocated afresh each time, such tensors cost more than their use on a CPU:
glibc maps tensors over 32 MB straight from the kernel and unmaps them when they are freed,
so every call faults in and zeroes its pages again (at 2048² about a third of the call's
products). Inside `reused_buffers()` these buffers outlive the call and serve the next one,
as a GPU caching allocator would; they are freed when the blocks are done.

Held between calls they add nothing to a ViR block's peak: the block's MLP, whose hidden
tokens reuse the scores/states buffer, needs fewer token tensors than retention does.
"""
import contextlib
import threading

import torch

_local = threading.local()
SCRATCH = 'scratch'  # the largest: retention's scores and states, then a block's MLP hidden


class Workspace:
    """Flat buffers by (name, dtype, device), grown when a call needs more."""

    def __init__(self):
        self.buffers = {}

    def take(self, name, numel, dtype, device, grow=True):
        """A flat tensor of at least `numel` elements, now the caller's until `give`; None
        where the workspace holds no buffer that large and `grow` is False."""
        key = (name, dtype, device)
        if not grow and (key not in self.buffers or self.buffers[key].numel() < numel):
            return None
        buffer = self.buffers.pop(key, None)
        if buffer is None or buffer.numel() < numel:
            buffer = None  # freed before the larger one is allocated
            buffer = torch.empty(numel, dtype=dtype, device=device)
        return buffer

    def give(self, name, buffer):
        self.buffers[(name, buffer.dtype, buffer.device)] = buffer


def active_workspace():
    """The workspace of the innermost `reused_buffers()` of this thread, or None."""
    return getattr(_local, 'workspace', None)


@contextlib.contextmanager
def reused_buffers():
    """Within it, eager chunkwise calls and in-place ViR blocks on this thread hand their
    large buffers on to the next call instead of freeing them; nested uses share the outer
    workspace."""
    outer = active_workspace()
    _local.workspace = outer or Workspace()
    try:
        yield _local.workspace
    finally:
        _local.workspace = outer
