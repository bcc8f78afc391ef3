"""A workspace that eager chunkwise calls and ViR blocks share while a model runs its blocks.

Each tiled call writes its tile scores and then its states into one large buffer, gathers keys
and values into another (its blocked decay sums put their summaries there while it is idle)
and uses a third for its queries in cells, its output in cells and then its output in token
order (chunkwise.py, `_Reuse`); a ViR block in inference writes its projections (qkv, proj,
fc2), its MLP's hidden tokens and its output into fresh tensors too. Allocated afresh each
time, such tensors cost more than their use on a CPU: glibc maps tensors over 32 MB straight
from the kernel and unmaps them when they are freed, so every call faults in and zeroes its
pages again (at 2048² about a third of the call's products). Inside `reused_buffers()` these
buffers outlive the call and serve the next one, as a GPU caching allocator would; they are
freed when the blocks are done. Fresh tensors under the threshold fare no better: glibc places
them in its heap, where the holes they leave between longer-lived tensors stay resident (at
2048² the heap grew by three token tensors per block and was trimmed again, and the process's
peak stood ~50% above its live tensors).

Held between calls they are what the next retention call needs anyway (the MLP's hidden
tokens reuse the scores/states buffer); a ViR-S block's live peak at 2048² is a LayerNorm
output next to them, one token tensor above a retention call's.

A call's result can live in a buffer too: the call `lend`s it, and whoever consumes the
result hands it back (`hand_back`) when done; until then no other call gets that buffer, so
a result that is never handed back is never overwritten.
"""
import contextlib
import math
import threading

import torch

_local = threading.local()
SCRATCH = 'scratch'  # the largest: retention's scores and states, then a block's MLP hidden
TOKENS = 'tokens'  # retention's queries in tile order, then its output in token order (lent)
PROJECTIONS = 'projections'  # a block's qkv projection, then its proj and fc2 outputs
STREAM = 'stream'  # a block's output tokens (lent to run_blocks, which hands back the
# input of a block that no one else reads: the block's output overwrites it)


class Workspace:
    """Flat buffers by (name, dtype, device), grown when a call needs more."""

    def __init__(self):
        self.buffers = {}
        self.lent = {}
        self.views = {}  # (storage, size, stride, offset) -> view of a buffer held here

    def take(self, name, numel, dtype, device, grow=True):
        """A flat tensor of at least `numel` elements, now the caller's until `give`; None
        where the workspace holds no buffer that large and `grow` is False."""
        key = (name, dtype, torch.device(device))
        if not grow and (key not in self.buffers or self.buffers[key].numel() < numel):
            return None
        buffer = self.buffers.pop(key, None)
        if buffer is None or buffer.numel() < numel:
            self._forget(buffer)
            buffer = None  # freed before the larger one is allocated
            buffer = torch.empty(numel, dtype=dtype, device=device)
        return buffer

    def give(self, name, buffer):
        key = (name, buffer.dtype, buffer.device)
        if self.buffers.get(key) is not buffer:
            self._forget(self.buffers.get(key))  # one buffer per name is kept
        self.buffers[key] = buffer

    def strided(self, buffer, size, stride, offset=0):
        """buffer.as_strided(size, stride, offset): made once, then the same view while the
        buffer lives. Each view is a dispatched op, and every block asks for the same ones
        (about 20 per ViR-S block)."""
        key = (_storage(buffer), tuple(size), tuple(stride), offset)
        view = self.views.get(key)
        if view is None:
            view = self.views[key] = buffer.as_strided(size, stride, offset)
        return view

    def _forget(self, buffer):
        """Drops the views of a buffer that is let go (they would keep its memory)."""
        if buffer is not None:
            storage = _storage(buffer)
            self.views = {key: view for key, view in self.views.items() if key[0] != storage}

    def lend(self, name, buffer):
        """`buffer` (taken as `name`) now holds a result handed to the caller."""
        self.lent.setdefault(name, []).append(buffer)

    def hand_back(self, name, result=None):
        """The result lent as `name` (the one in `result`'s storage, else the last) has been
        consumed: its buffer serves the next call. Anything else is left alone."""
        lent = self.lent.get(name, [])
        for index in reversed(range(len(lent))):
            if result is None or _same_storage(lent[index], result):
                self.give(name, lent.pop(index))
                return


def _storage(tensor):
    """Where a tensor's memory starts: a cached view keeps it alive, so it names one buffer."""
    return tensor.untyped_storage().data_ptr()


def _same_storage(a, b):
    return _storage(a) == _storage(b)


def view_of(buffer, size, stride=None, offset=0):
    """buffer.as_strided(size, stride, offset), contiguous strides if none are given: the
    active workspace's kept view where one is open (`Workspace.strided`)."""
    size = tuple(size)
    if stride is None:
        stride = [math.prod(size[i + 1:]) for i in range(len(size))]
    workspace = active_workspace()
    if workspace is None:
        return buffer.as_strided(size, stride, offset)
    return workspace.strided(buffer, size, stride, offset)


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
