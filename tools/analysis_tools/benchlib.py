"""What the benchmark scripts share (tools/analysis_tools/benchmark_*.py).

Each configuration runs in a fresh child process, so its memory numbers are its own: the
parent never imports torch, launches `SCRIPT --_child KIND JSON` and reads the JSON records
the child prints with `emit`. The rest measures the machine (free memory, CPU name, matmul
speed), turns a child that died into a status, counts what the operators run (`OpCounter`, the
one source of op and FLOP numbers), and writes the results: Markdown tables, a log-log plot, one
marked section of a Markdown file (the rest of it left alone) and the raw JSON, behind the same
output options in every benchmark (`add_output_args`, `write_outputs`).
"""
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULT_TAG = '@@bench@@ '
GIB, MIB = 1 << 30, 1 << 20
# glibc keeps tensors above its mmap threshold (<= 32 MB) in fresh mappings that page-fault on
# first touch; children measuring large-tensor code raise it (docs/benchmarks.md).
MALLOC_ENV = {'MALLOC_MMAP_THRESHOLD_': str(1 << 34), 'MALLOC_TRIM_THRESHOLD_': str(1 << 34)}


# --------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------
def launch(script, kind, cfg, timeout, python=None, env=None):
    """Run `script --_child kind cfg` in its own session; (records, returncode or 'timeout',
    stderr). A child past `timeout` seconds is killed with everything it started."""
    cmd = [python or sys.executable, str(Path(script).resolve()), '--_child', kind,
           json.dumps(cfg)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=str(REPO),
                            env=dict(os.environ, **(env or {})))
    try:
        out, err = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        code = 'timeout'
    records = [json.loads(line[len(RESULT_TAG):]) for line in out.splitlines()
               if line.startswith(RESULT_TAG)]
    return records, code, err


def failure(code, err, timeout):
    """Status and note of a child that ended without a final record."""
    if code == 'timeout':
        return dict(status='timeout', note=f'timeout > {timeout:g} s')
    if code in (-signal.SIGKILL, 137):
        return dict(status='OOM', note='OOM (killed by SIGKILL, likely the OOM killer)')
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return dict(status='error', note=f'error (rc {code}): {lines[-1][:160] if lines else "?"}')


def mem_available():
    """Memory free for a new process: MemAvailable, capped by a cgroup limit if any."""
    avail = None
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('MemAvailable:'):
                avail = int(line.split()[1]) * 1024
    try:
        limit = Path('/sys/fs/cgroup/memory.max').read_text().strip()
        if limit != 'max':
            used = int(Path('/sys/fs/cgroup/memory.current').read_text())
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail


def loadavg():
    try:
        return float(Path('/proc/loadavg').read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cpu_name():
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_section(path, body, name):
    """Replace (or append) the text between `<!-- name:start -->` and `<!-- name:end -->`
    in `path`, atomically."""
    start_mark, end_mark = f'<!-- {name}:start -->', f'<!-- {name}:end -->'
    path = Path(path)
    text = path.read_text() if path.exists() else '# Benchmarks\n'
    section = f'{start_mark}\n{body.rstrip()}\n{end_mark}'
    start, end = text.find(start_mark), text.find(end_mark)
    if start != -1 and end > start:
        text = text[:start] + section + text[end + len(end_mark):]
    else:
        text = text.rstrip('\n') + '\n\n' + section + '\n'
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'{path.name}.tmp-{name}')
    tmp.write_text(text)
    os.replace(tmp, path)


def markdown_table(header, rows, align='---'):
    """Lines of a Markdown table; `align` is each column's separator ('---', '---:')."""
    lines = ['| ' + ' | '.join(header) + ' |', '|' + f'{align}|' * len(header)]
    return lines + ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]


def plot_loglog(path, series, panels, xlabel, title):
    """One log-log panel per (key, axis title) in `panels`, one line per series.

    `series`: (label, matplotlib style, points, failures) with points a list of dicts holding
    'x' and every panel key, failures a list of (x, text) annotated on the first panel.
    Returns False (and says so) when matplotlib is not installed.
    """
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print(f'matplotlib is not installed: no plot written to {path}')
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5))
    axes = list(getattr(axes, 'flat', [axes]))
    xs = sorted({p['x'] for _, _, points, _ in series for p in points})
    for label, style, points, failures in series:
        points = sorted(points, key=lambda p: p['x'])
        if not points:
            continue
        for ax, (key, _) in zip(axes, panels):
            ax.plot([p['x'] for p in points], [p[key] for p in points], label=label, **style)
        for x, text in failures:
            axes[0].annotate(text, (x, points[-1][panels[0][0]]), fontsize=7)
    for ax, (_, axis_title) in zip(axes, panels):
        ax.set_xscale('log', base=2)
        ax.set_yscale('log')
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_title(axis_title)
        ax.grid(True, which='both', alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


DOCS = REPO / 'docs' / 'benchmarks.md'


def add_output_args(parser, quick_help, default_out=DOCS):
    """The output options every benchmark shares. --quick runs the smallest setting and, unless
    --out is given, writes nothing: a smoke run must not replace the documented numbers."""
    parser.add_argument('--quick', action='store_true', help=quick_help)
    where = default_out.relative_to(REPO) if default_out else 'none, print only'
    parser.add_argument('--out', help=f'Markdown file whose section is (re)written (default: '
                        f'{where}; with --quick: none)')
    parser.set_defaults(default_out=default_out)
    parser.add_argument('--no-docs', '--no-write', dest='no_write', action='store_true',
                        help='print only; write no Markdown file')
    parser.add_argument('--json', help='also write the raw results here')


def output_path(args):
    """Where the Markdown section goes (None: print only)."""
    if args.no_write:
        return None
    return Path(args.out) if args.out else None if args.quick else args.default_out


def write_outputs(args, text, section, results):
    """Print the report; write the JSON and the Markdown section the options ask for."""
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    out = output_path(args)
    if out is not None:
        write_section(out, text, section)
        print(f'wrote the {section} section of {out}')
    return out


# --------------------------------------------------------------------------------------------
# Child side
# --------------------------------------------------------------------------------------------
def emit(**record):
    print(RESULT_TAG + json.dumps(record), flush=True)


def status_bytes(field):
    """A /proc/self/status size (VmRSS, VmHWM, VmSize) in bytes, or None."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    return None


def reset_peak_rss():
    """Reset VmHWM (Linux >= 4.0) so the peak read later is what follows; False if not
    possible (then the peak also covers the import and build phase)."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def limit_address_space(extra_bytes):
    """Let an oversized allocation fail inside torch ("OOM") instead of waking the kernel's
    OOM killer on a shared machine: address space now plus `extra_bytes`."""
    import resource
    limit = status_bytes('VmSize') + int(extra_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))


def lift_address_space_limit():
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def is_oom(error):
    text = str(error).lower()
    return isinstance(error, MemoryError) or any(s in text for s in (
        "can't allocate memory", 'cannot allocate memory', 'not enough memory',
        'out of memory', 'std::bad_alloc'))


def matmul_speed(size=2048, repeats=10):
    """(GFLOP/s, seconds) of the best of `repeats` size^3 fp32 torch.mm after 3 warm-ups: the
    machine's matmul peak."""
    import torch
    a, b, out = torch.randn(size, size), torch.randn(size, size), torch.empty(size, size)
    for _ in range(3):
        torch.mm(a, b, out=out)
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9, best


def _op_counter_class():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry
    flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
    solves = {torch.ops.aten.linalg_solve_triangular}

    class OpCounter(TorchDispatchMode):
        """Counts every dispatched ATen op and its FLOPs (torch's formulas; the CPU
        flash-attention kernel, which they skip, as 4 L S d per batch and head; triangular
        solves, also skipped, as L^2 per right-hand column: a multiply and an add per
        entry of the triangle)."""

        def __init__(self):
            super().__init__()
            self.ops, self.flops = 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            self.ops += 1
            if func is flash_cpu:
                batch, heads, length, dim = args[0].shape
                self.flops += 4 * batch * heads * length * args[1].shape[2] * dim
            elif func._overloadpacket in solves:  # triangular solve: L^2 per right-hand column
                matrix, rhs = args[0], args[1]
                self.flops += rhs.numel() * matrix.shape[-1]
            elif func._overloadpacket in flop_registry:
                self.flops += flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)
            return out
    return OpCounter


def register_timm_vit_taps():
    """Register `TimmViTTaps` in mmseg: a timm ViT giving the same four tapped, rescaled maps
    as the mm ViR backbone's `pyramid='taps'`, the baseline of the segmentation benchmark."""
    import timm
    from mmengine.model import BaseModule
    from mmseg.registry import MODELS
    import torch.nn as nn

    from vir_dense.mm.backbone import TAP_SCALES
    from vir_dense.mm.neck import rescale_layer

    class TimmViTTaps(BaseModule):
        def __init__(self, model_name='vit_small_patch16_224', out_indices=(3, 5, 7, 11),
                     init_cfg=None):
            super().__init__(init_cfg=init_cfg)
            self.vit = timm.create_model(model_name, pretrained=False, num_classes=0,
                                         dynamic_img_size=True, dynamic_img_pad=True)
            self.out_indices = list(out_indices)
            self.rescales = nn.ModuleList(
                rescale_layer(self.vit.embed_dim, scale) for scale in TAP_SCALES)

        def forward(self, x):
            height, width = x.shape[-2:]
            feats = self.vit.forward_intermediates(x, indices=self.out_indices,
                                                   output_fmt='NCHW', intermediates_only=True)
            outs = []
            for rescale, feat, scale in zip(self.rescales, feats, TAP_SCALES):
                stride = int(self.vit.patch_embed.patch_size[0] / scale)
                outs.append(rescale(feat)[..., :-(-height // stride), :-(-width // stride)])
            return tuple(outs)

    MODELS.register_module(module=TimmViTTaps, force=True)
    return TimmViTTaps


def __getattr__(name):  # OpCounter needs torch, which the parent process never imports
    if name == 'OpCounter':
        return _op_counter_class()
    raise AttributeError(name)
