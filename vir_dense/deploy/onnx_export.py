"""Export a target to ONNX with torch's dynamo exporter, and check it with onnxruntime (CPU).

The exporter is ``torch.onnx.export(..., dynamo=True)``: it traces with ``torch.export`` (the
retention operator's chunk plan is built in the graph there, and its autograd Function is
inlined), so every retention form exports as plain matmuls, pads and reshapes. The graph is
specialised to the export's image size: the chunk geometry and the resized position
embedding are constants of that size (export once per deployment resolution).

Relative error, as reported and checked: ``max|onnx - torch| / max|torch|`` per output (the
largest over the outputs is the one number), in fp32.
"""
import os
import statistics
import time
import traceback
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils._pytree import tree_flatten

from .errors import DeployError, ExportFailed
from .extra import require_deploy

DEFAULT_TOLERANCE = 1e-4


def example_input(shape, batch=1, channels=3, seed=0):
    """A fixed random image batch of (H, W) `shape`, standing in for a normalised image."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, *shape, generator=generator)


def export_onnx(module, example, path, opset=None, optimize=True):
    """Write `module(example)` as an ONNX file at `path`; returns the output names.

    Raises :class:`ExportFailed` with the exporter's own reason (e.g. an op without an ONNX
    translation) when the module cannot be exported.
    """
    require_deploy()
    module.eval()
    with torch.no_grad():
        outputs, _ = tree_flatten(module(example))
    names = [f'output_{i}' for i in range(len(outputs))] if len(outputs) > 1 else ['output']
    kwargs = dict(dynamo=True, optimize=optimize, verbose=False, input_names=['image'],
                  output_names=names)
    if opset is not None:
        kwargs['opset_version'] = opset
    try:
        with torch.no_grad():
            program = torch.onnx.export(module, (example,), **kwargs)
    except Exception as err:  # the exporter wraps the cause; keep its message whole
        raise ExportFailed(f'torch.onnx.export could not export {type(module).__name__}: '
                           f'{_root_cause(err)}') from err
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    program.save(path)
    return names


def _root_cause(err):
    """The innermost exception's type, first lines and the last frame outside torch (where in
    the model's code it happened); the exporter nests the cause 2-3 levels deep."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    where = ''
    for frame in traceback.extract_tb(err.__traceback__):
        if f'{os.sep}torch{os.sep}' not in frame.filename:
            where = f' (at {_short_path(frame.filename)}:{frame.lineno})'
    return f'{type(err).__name__}{where}: ' + ' | '.join(lines[:3])[:600]


def _short_path(filename):
    marker = f'site-packages{os.sep}'
    return filename.split(marker, 1)[1] if marker in filename else os.path.relpath(filename)


def session(path, threads=None):
    """An onnxruntime CPU session (`threads` intra-op threads; None: onnxruntime's default)."""
    ort = require_deploy(('onnxruntime',))['onnxruntime']
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def relative_error(got, want):
    """max|got - want| / max|want| (0 when both are all zeros)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise DeployError(f'onnxruntime gave shape {got.shape}, PyTorch {want.shape}')
    scale = np.abs(want).max() if want.size else 0.0
    diff = np.abs(got - want).max() if want.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


@dataclass
class Check:
    """onnxruntime against PyTorch on one input: errors per output, latencies in ms."""
    errors: List[float]
    shapes: List[tuple]
    torch_ms: Optional[float] = None
    onnx_ms: Optional[float] = None
    threads: Optional[int] = None
    load: Optional[tuple] = None
    timings: Dict[str, List[float]] = field(default_factory=dict)

    @property
    def max_error(self):
        return max(self.errors) if self.errors else 0.0

    def passed(self, tolerance=DEFAULT_TOLERANCE):
        return self.max_error <= tolerance


def _timed(fn, repeats):
    fn()  # warm-up: allocator, onnxruntime's first-run planning, cached plans
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def check_onnx(path, module, example, repeats=0, threads=None):
    """Run the ONNX file with onnxruntime (CPU) and `module` with PyTorch on `example`.

    With repeats > 0, both are also timed in this process, back to back, at the same thread
    count (torch.set_num_threads and onnxruntime's intra-op threads; default: torch's current
    count): the medians in ms, after one warm-up run each.
    """
    threads = threads or torch.get_num_threads()
    sess = session(path, threads)
    feed = {sess.get_inputs()[0].name: example.numpy()}
    module.eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            want, _ = tree_flatten(module(example))
        got = sess.run(None, feed)
        if len(got) != len(want):
            raise DeployError(f'onnxruntime gave {len(got)} outputs, PyTorch {len(want)}')
        check = Check([relative_error(g, w.numpy()) for g, w in zip(got, want)],
                      [tuple(w.shape) for w in want], threads=threads)
        if repeats:
            check.load = os.getloadavg()
            with torch.no_grad():
                check.timings['torch'] = _timed(lambda: module(example), repeats)
            check.timings['onnxruntime'] = _timed(lambda: sess.run(None, feed), repeats)
            check.torch_ms = statistics.median(check.timings['torch'])
            check.onnx_ms = statistics.median(check.timings['onnxruntime'])
    finally:
        torch.set_num_threads(previous)
    return check


def export_and_check(built, shape, path, repeats=0, threads=None, batch=1,
                     opset=None) -> Check:
    """Export `built` (targets.build_target) at image `shape` (H, W) to `path` and check it."""
    example = example_input(shape, batch, built.in_channels)
    export_onnx(built.module, example, path, opset)
    return check_onnx(path, built.module, example, repeats, threads)


def describe(check: Check, tolerance=DEFAULT_TOLERANCE) -> Sequence[str]:
    lines = [f'outputs: {len(check.errors)} ({", ".join(str(s) for s in check.shapes[:6])}'
             f'{", ..." if len(check.shapes) > 6 else ""})',
             f'max relative error (max|onnx - torch| / max|torch|, fp32): '
             f'{check.max_error:.2e} (tolerance {tolerance:.0e}: '
             f'{"ok" if check.passed(tolerance) else "EXCEEDED"})']
    if check.torch_ms is not None:
        lines.append(f'latency (median of {len(check.timings["torch"])}, {check.threads} '
                     f'threads, load {check.load[0]:.2f}): PyTorch {check.torch_ms:.1f} ms, '
                     f'onnxruntime {check.onnx_ms:.1f} ms')
    return lines
