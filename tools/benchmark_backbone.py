#!/usr/bin/env python
"""Backbone forward benchmark: ViR-S in each retention mode vs timm ViT-S (CPU, batch 1, fp32).

    .venv/bin/python tools/benchmark_backbone.py                        # full run (slow)
    .venv/bin/python tools/benchmark_backbone.py --sizes 224 384 --repeats 2   # quick check

What is measured
----------------
`model.forward_features(x)` (all tokens out, as a dense-prediction backbone uses it; `--classifier`
times `model(x)` instead) of `vir_small_patch16_224` (dynamic_img_size=True, mask `--mask`,
default causal_2d) in each retention mode -- parallel, chunkwise for every `--chunk-sizes` value,
recurrent (token by token in Python, only up to `--recurrent-max-size`) -- and of timm
`vit_small_patch16_224` (dynamic_img_size=True; its attention is F.scaled_dot_product_attention,
`blocks[0].attn.fused_attn` is checked and reported), at every `--sizes` resolution.
Batch 1, float32, model.eval(), torch.no_grad().

Every configuration runs in a fresh subprocess, so its memory numbers are its own:
  * "total"      = peak RSS of the child (resource.getrusage(RUSAGE_SELF).ru_maxrss) over the
                   warm-up and the timed forwards;
  * "activation" = that peak minus the RSS right after building the model and the input.
Before the warm-up the child resets the kernel's RSS high-water mark (`/proc/self/clear_refs`,
value 5) so that a transient peak of the import/build phase cannot hide the forward's own peak;
the report says if that reset was unavailable. The peak includes what the first forward builds
and caches (parallel-mode decay mask, resized position embedding).
Latency = median of `--repeats` forwards after one warm-up forward. When the warm-up shows that
`--repeats` forwards cannot fit in the `--timeout`, fewer are timed (at least one; the table
gives n). A configuration that runs out of memory or time is reported as "OOM" /
"timeout > Ns" and the script goes on. The child also gets an address-space limit
(RLIMIT_AS) a little above the memory that was free at its launch, so that an oversized
allocation fails inside torch ("OOM") instead of waking the kernel's OOM killer on a shared
machine.

Guards before launching a configuration (disable with --no-guard):
  * memory: estimated peak (see `estimate_memory`: the N x N tensors of the parallel form /
    non-fused attention, N^2 * heads * 4 B * 3, plus the token tensors) above the free memory
    -> "skipped: needs ~X GiB";
  * time: FLOPs / (measured matmul GFLOP/s) for the warm-up plus one forward above --timeout
    (i.e. it could not finish even at the machine's matmul peak) -> "skipped";
  * a configuration that already timed out or ran out of memory at a smaller size is not
    tried at larger sizes.

FLOPs (analytic, counted from the code paths actually run; see `count_flops`)
-----------------------------------------------------------------------------
2 x multiply-accumulate of every matmul / einsum / convolution product; elementwise work
(decay masks, LayerNorm, GELU, softmax, residuals) is not counted. With D = 384 (embed dim),
H = 6 heads, d = 64 (head dim), L = 12 blocks, P = 16, a g_r x g_c patch grid, N = g_r g_c
patches and T = N + 1 tokens (class token):
  common (both models)  patch embed 2 N (3 P^2) D  +  L * 24 T D^2
                        (qkv 6 T D^2, proj 2 T D^2, MLP fc1 + fc2 16 T D^2)
  ViT-S (SDPA)          + L * 4 T^2 D          (Q K^T and A V, full T x T)
  ViR-S parallel        + L * 4 T^2 D          ((Q K^T * D_mask) V computed densely: the causal
                                                masks' zeros are multiplied too)
  ViR-S chunkwise       + L * sum over streamed pieces p (n_p tokens, C = g_c columns):
                          4 n_p^2 D                       intra-chunk (dense, like parallel)
                        + 2 n_p D d     [not 1st piece]   cross term q . mixed states
                        + 2 n_p D d                       state update k^T v
                        (causal masks stream chunks of max(1, chunk // C) whole rows and then the
                        class-token row as its own piece; bidirectional masks run
                        retention_chunkwise block by block: a top-down pass as above plus a
                        bottom-up pass without the intra-chunk part; mixing the C column states
                        before each cross term is a scan of elementwise multiply-adds,
                        O(H C d^2) per piece, so it is not counted)
  ViR-S recurrent       + L * per grid cell 2 H d^2 (k^T v into the column state) and per token
                        2 H d^2 (q . state)  (bidirectional: four row scans per cell).
This matches torch.utils.flop_counter.FlopCounterMode on the ViR paths (`--check-flops` prints
the comparison) except where torch turns a size-1 contraction into a multiply, which the counter
does not count; FlopCounterMode is not used for the numbers because it does not count the CPU
flash-attention kernel that ViT-S's SDPA dispatches to. Achieved GFLOP/s = FLOPs / median
latency; the machine's fp32 matmul GFLOP/s (2048 x 2048 x 2048 torch.mm, best of 10) is measured
in the same run, in its own subprocess with the same thread count.

Outputs: a table and the target checks on stdout; the same between the markers
`<!-- backbone:start -->` / `<!-- backbone:end -->` of docs/benchmarks.md (the rest of that
file is kept as it is); a log-log plot docs/benchmark_backbone.png; `--json` dumps raw results.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from benchlib import (GIB, MIB, REPO, cpu_name, emit, failure, is_oom, launch, limit_address_space,
                      lift_address_space_limit, loadavg, matmul_speed, mem_available,
                      reset_peak_rss, status_bytes, write_section)

# ViR-S/16 and ViT-S/16 share these dimensions.
PATCH, DIM, DEPTH, HEADS = 16, 384, 12, 6
HEAD_DIM = DIM // HEADS
VIR_NAME, VIT_NAME = 'vir_small_patch16_224', 'vit_small_patch16_224'


# ----------------------------------------------------------------------------------------
# geometry, FLOPs and memory estimates (pure Python: the parent process never imports torch)
# ----------------------------------------------------------------------------------------
def grid_of(size):
    """Patch grid of a size x size image (PatchEmbed floors, as timm's conv does)."""
    return size // PATCH, size // PATCH


def layout_of(size, mask):
    """(rows, cols) of the token layout the retention forms work on (1D masks: one column)."""
    rows, cols = grid_of(size)
    return (rows, cols) if mask.endswith('_2d') else (rows * cols, 1)


def chunk_rows(chunk, size, mask):
    """Whole rows per chunk as the operator does it (rows_per_chunk), capped at the grid."""
    rows, cols = layout_of(size, mask)
    return min(rows, max(1, chunk // cols))


def effective_chunk_tokens(chunk, size, mask):
    return chunk_rows(chunk, size, mask) * layout_of(size, mask)[1]


def _chunk_pieces(rows, per_chunk):
    return [min(per_chunk, rows - start) for start in range(0, rows, per_chunk)]


def count_flops(model, mode, size, mask='causal_2d', chunk=256):
    """Analytic forward FLOPs of forward_features (formulas in the module docstring)."""
    g_r, g_c = grid_of(size)
    n_patch = g_r * g_c
    tokens = n_patch + 1
    flops = 2 * n_patch * (3 * PATCH * PATCH) * DIM + DEPTH * 24 * tokens * DIM * DIM
    if model == 'vit' or mode == 'parallel':
        return flops + DEPTH * 4 * tokens * tokens * DIM
    rows, cols = layout_of(size, mask)
    causal = mask.startswith('causal')
    state_read = 2 * HEADS * HEAD_DIM * HEAD_DIM            # per token: q . (d x d)
    per_block = 0
    if mode == 'chunkwise':
        per_chunk = chunk_rows(chunk, size, mask)
        if causal:  # streamed: chunks of whole rows, then the class-token row as a piece
            pieces = [r * cols for r in _chunk_pieces(rows, per_chunk)] + [cols]
            for index, n in enumerate(pieces):
                per_block += 4 * n * n * DIM + 2 * n * DIM * HEAD_DIM
                if index:
                    per_block += 2 * n * DIM * HEAD_DIM
        else:  # block by block on the extended grid (class-token row inside the last chunk)
            pieces = [r * cols for r in _chunk_pieces(rows + 1, per_chunk)]
            for index, n in enumerate(pieces):  # top-down, with the intra-chunk part
                per_block += 4 * n * n * DIM + 2 * n * DIM * HEAD_DIM
                if index:
                    per_block += 2 * n * DIM * HEAD_DIM
            for index, n in enumerate(reversed(pieces)):  # bottom-up, rows below only
                per_block += 2 * n * DIM * HEAD_DIM
                if index:
                    per_block += 2 * n * DIM * HEAD_DIM
    elif mode == 'recurrent':
        cells = (rows + 1) * cols  # extended grid (the class-token row)
        if causal:  # streamed token by token; the class-token row's empty cells only decay
            per_block = tokens * (state_read + state_read)
        else:  # top-down and bottom-up row scans, each forwards and backwards
            per_block = cells * state_read + 4 * cells * state_read + cells * state_read
    else:
        raise ValueError(mode)
    return flops + DEPTH * per_block


def estimate_memory(model, mode, size, mask, chunk, flash_attention):
    """Rough activation peak in bytes (for the skip guard only, deliberately generous)."""
    g_r, g_c = grid_of(size)
    tokens = g_r * g_c + 1
    quadratic = 3 * HEADS * 4  # bytes per (query, key) pair: mask + scores + masked scores
    token_tensors = 24 * tokens * DIM * 4  # x, qkv, q/k/v, outputs, MLP hidden (4D) x 2, ...
    _, cols = layout_of(size, mask)
    states = DEPTH * HEADS * cols * HEAD_DIM * HEAD_DIM * 4 * 3
    if model == 'vit':
        return token_tensors + (0 if flash_attention else quadratic * tokens * tokens)
    if mode == 'parallel':
        return token_tensors + quadratic * tokens * tokens
    if mode == 'chunkwise':
        n = effective_chunk_tokens(chunk, size, mask)
        return token_tensors + quadratic * n * n + states
    return token_tensors + states


# ----------------------------------------------------------------------------------------
# child processes
# ----------------------------------------------------------------------------------------
def _sched_times():
    """(on-CPU, runnable-but-waiting) nanoseconds summed over this process's threads."""
    run = wait = 0
    try:
        for task in os.listdir('/proc/self/task'):
            with open(f'/proc/self/task/{task}/schedstat') as f:
                fields = f.read().split()
            run, wait = run + int(fields[0]), wait + int(fields[1])
    except (OSError, ValueError, IndexError):
        return None
    return run, wait


def _import_vir_models():
    """Register the ViR timm models, with or without the OpenMMLab stack installed.

    `import vir_dense.models` runs vir_dense/__init__.py, which also registers the mmdet/mmseg
    side. Without mmengine/mmdet (or while the environment is being built) the models module
    is loaded under a bare package instead: it needs only torch and timm.
    """
    import types
    sys.path.insert(0, str(REPO))
    try:
        import vir_dense.models  # noqa: F401
    except ImportError:
        for name in [m for m in sys.modules if m == 'vir_dense' or m.startswith('vir_dense.')]:
            del sys.modules[name]
        package = types.ModuleType('vir_dense')
        package.__path__ = [str(REPO / 'vir_dense')]
        sys.modules['vir_dense'] = package
        import vir_dense.models  # noqa: F401


def child_probe(cfg):
    """Machine facts: versions, threads, fp32 matmul GFLOP/s, the CPU SDPA kernel of ViT-S."""
    import torch
    import timm
    torch.set_num_threads(cfg['threads'])
    sched_start = _sched_times()
    gflops, best = matmul_speed()
    sched_end = _sched_times()
    cpu_wait = None
    if sched_start and sched_end:
        run, wait = (b - a for a, b in zip(sched_start, sched_end))
        cpu_wait = wait / max(run + wait, 1)
    # Which aten kernel F.scaled_dot_product_attention runs for ViT-S-shaped inputs.
    from torch.profiler import ProfilerActivity, profile
    q = torch.randn(1, HEADS, 197, HEAD_DIM)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    kernels = sorted({e.key for e in prof.key_averages()
                      if 'attention' in e.key and e.key != 'aten::scaled_dot_product_attention'})
    emit(status='ok', torch=torch.__version__, timm=timm.__version__,
         threads=torch.get_num_threads(), matmul_gflops=gflops, matmul_best_s=best,
         matmul_cpu_wait=cpu_wait, sdpa_kernels=kernels, cpu=cpu_name(), cores=os.cpu_count(),
         python=platform.python_version())


def child_run(cfg):
    """One configuration: build, warm up, time; report latency and peak RSS."""
    started = time.perf_counter()
    import gc
    import resource
    import torch
    import timm
    torch.set_num_threads(cfg['threads'])
    if cfg['model'] == 'vir':
        _import_vir_models()
        model = timm.create_model(VIR_NAME, dynamic_img_size=True, mask=cfg['mask'],
                                  retention_mode=cfg['mode'], chunk_size=cfg['chunk'] or 256)
        info = {'retention_mode': model.retention_mode, 'mask': model.mask,
                'chunk_size': model.chunk_size}
    else:
        model = timm.create_model(VIT_NAME, dynamic_img_size=True)
        info = {'fused_attn': bool(model.blocks[0].attn.fused_attn)}
    model.eval()
    forward = model if cfg['classifier'] else model.forward_features
    x = torch.randn(1, 3, cfg['size'], cfg['size'])
    gc.collect()
    rss_build = status_bytes('VmRSS')
    hwm_reset = reset_peak_rss()  # else ru_maxrss also covers the build
    if cfg.get('mem_budget'):
        # The activation budget plus 1.5 GiB for mappings that are reserved but not touched.
        limit_address_space(max(0, cfg['mem_budget'] - rss_build) + 1.5 * GIB)
    emit(event='built', rss_build=rss_build, info=info)

    deadline = started + cfg['timeout']
    times = []
    try:
        with torch.no_grad():
            start = time.perf_counter()
            forward(x)
            warmup = time.perf_counter() - start
            emit(event='warmup', seconds=warmup)
            left = deadline - time.perf_counter()
            repeats = max(1, min(cfg['repeats'], int(0.85 * left / max(warmup, 1e-9))))
            sched_start = _sched_times()
            for _ in range(repeats):
                start = time.perf_counter()
                forward(x)
                times.append(time.perf_counter() - start)
                emit(event='repeat', seconds=times[-1])
    except (RuntimeError, MemoryError) as error:
        if is_oom(error):
            emit(status='OOM', error=str(error).splitlines()[0][:200], rss_build=rss_build,
                 info=info)
            return
        raise
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sched_end = _sched_times()
    cpu_wait = None
    if sched_start and sched_end:  # share of runnable time spent waiting for a core
        run, wait = (b - a for a, b in zip(sched_start, sched_end))
        cpu_wait = wait / max(run + wait, 1)
    record = dict(status='ok', latency_s=statistics.median(times), latency_min_s=min(times),
                  times_s=times, warmup_s=warmup, repeats=len(times), rss_build=rss_build,
                  peak_total=peak, peak_activation=peak - rss_build, hwm_reset=hwm_reset,
                  cpu_wait=cpu_wait, info=info)
    lift_address_space_limit()
    if cfg.get('check_flops'):
        from torch.utils.flop_counter import FlopCounterMode
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            forward(x)
        record['counted_flops'] = counter.get_total_flops()
    if cfg.get('profile'):
        from torch.profiler import ProfilerActivity, profile
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
            forward(x)
        print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=15),
              file=sys.stderr, flush=True)
    emit(**record)


# ----------------------------------------------------------------------------------------
# parent: launch, guard, collect
# ----------------------------------------------------------------------------------------
def run_config(cfg, args, python):
    records, code, err = launch(__file__, 'run', cfg, args.timeout, python)
    final = next((r for r in reversed(records) if 'status' in r), None)
    built = next((r for r in records if r.get('event') == 'built'), {})
    warm = next((r for r in records if r.get('event') == 'warmup'), None)
    result = dict(cfg)
    result['info'] = built.get('info', {})
    if args.profile and err.strip():
        print(err, file=sys.stderr)
    if final is not None:
        result.update(final)
        return result
    result.update(failure(code, err, args.timeout))
    if code == 'timeout' and warm:
        result['note'] += f' (1st forward {warm["seconds"]:.1f} s)'
        result['first_forward_s'] = warm['seconds']
    return result


def build_configs(args):
    configs = []
    for size in sorted(args.sizes):
        base = dict(size=size, mask=args.mask, repeats=args.repeats, threads=args.threads,
                    timeout=args.timeout, classifier=args.classifier,
                    check_flops=args.check_flops, profile=args.profile)
        configs.append(dict(base, model='vit', mode='sdpa', chunk=None))
        configs.append(dict(base, model='vir', mode='parallel', chunk=None))
        seen = {}
        for chunk in args.chunk_sizes:
            rows = chunk_rows(chunk, size, args.mask)
            configs.append(dict(base, model='vir', mode='chunkwise', chunk=chunk,
                                same_as=seen.get(rows)))
            seen.setdefault(rows, chunk)
        if size <= args.recurrent_max_size:
            configs.append(dict(base, model='vir', mode='recurrent', chunk=None))
        else:
            configs.append(dict(base, model='vir', mode='recurrent', chunk=None,
                                status='not run',
                                note=f'not run: token-by-token Python loop, only sizes <= '
                                     f'{args.recurrent_max_size} (--recurrent-max-size)'))
    return configs


def series_key(cfg):
    if cfg['model'] == 'vit':
        return 'ViT-S (SDPA)'
    if cfg['mode'] == 'chunkwise':
        return f'ViR-S chunkwise c={cfg["chunk"]}'
    return f'ViR-S {cfg["mode"]}'


def run_all(args, machine, python):
    results, failed, measured = [], {}, {}
    flash = any('flash' in k for k in machine['sdpa_kernels'])
    for cfg in build_configs(args):
        key = series_key(cfg)
        tokens = grid_of(cfg['size'])[0] * grid_of(cfg['size'])[1] + 1
        cfg['tokens'] = tokens
        cfg['flops'] = count_flops(cfg['model'], cfg['mode'], cfg['size'], cfg['mask'],
                                   cfg['chunk'] or 256)
        if cfg['mode'] == 'chunkwise':
            cfg['chunk_tokens'] = effective_chunk_tokens(cfg['chunk'], cfg['size'], cfg['mask'])
        label = f'{cfg["size"]}^2 {key}'
        if cfg.get('status') == 'not run':
            results.append(cfg)
            continue
        if cfg.get('same_as'):
            twin = next(r for r in results if r['size'] == cfg['size']
                        and r['mode'] == 'chunkwise' and r['chunk'] == cfg['same_as'])
            copy = dict(twin, chunk=cfg['chunk'], same_as=cfg['same_as'])
            results.append(copy)
            print(f'[{label}] same chunks as c={cfg["same_as"]}: reusing that run', flush=True)
            continue
        free = mem_available()
        need = estimate_memory(cfg['model'], cfg['mode'], cfg['size'], cfg['mask'],
                               cfg['chunk'] or 256, flash)
        ideal_s = 2 * cfg['flops'] / (machine['matmul_gflops'] * 1e9)
        skip = None
        previous = measured.get(key)
        predicted_s = (2 * cfg['flops'] / (previous['gflops_per_s'] * 1e9)
                       if previous and cfg['mode'] != 'recurrent' else 0)
        if key in failed:
            skip = f'skipped: {failed[key]} at a smaller size'
        elif not args.no_guard and need > free - GIB:
            skip = f'skipped: needs ~{need / GIB:.1f} GiB (free {free / GIB:.1f} GiB)'
        elif not args.no_guard and cfg['mode'] != 'recurrent' and ideal_s > args.timeout:
            skip = (f'skipped: warm-up + 1 forward need >= {ideal_s:.0f}s even at the '
                    f'matmul peak (timeout {args.timeout:g}s)')
        elif not args.no_guard and predicted_s > args.timeout:
            skip = (f'skipped: warm-up + 1 forward predicted ~{predicted_s:.0f}s at the '
                    f'{previous["gflops_per_s"]:.0f} GFLOP/s measured at {previous["size"]}² '
                    f'(timeout {args.timeout:g}s)')
        if skip:
            print(f'[{label}] {skip}', flush=True)
            results.append(dict(cfg, status='skipped', note=skip))
            continue
        cfg['mem_budget'] = None if args.no_guard else int(free - GIB)
        print(f'[{label}] running (est. {need / GIB:.2f} GiB, free {free / GIB:.1f} GiB) ...',
              end=' ', flush=True)
        result = run_config(cfg, args, python)
        if result['status'] == 'ok':
            result['gflops_per_s'] = result['flops'] / result['latency_s'] / 1e9
            measured[key] = result
            print(f'{result["latency_s"] * 1e3:.1f} ms, activation '
                  f'{result["peak_activation"] / MIB:.0f} MiB', flush=True)
        else:
            result.setdefault('note', result['status'])
            print(result['note'], flush=True)
            if result['status'] in ('OOM', 'timeout'):
                failed[key] = result['status']
        results.append(result)
    return results


# ----------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------
def _ms(seconds):
    return f'{seconds * 1e3:,.0f}' if seconds >= 10 else f'{seconds * 1e3:.1f}'


def _mode_label(r):
    if r['model'] == 'vit':
        return 'ViT-S', 'attention (SDPA)', '-'
    if r['mode'] == 'chunkwise':
        chunk = f'{r["chunk"]} ({r["chunk_tokens"]})'
        return 'ViR-S', 'chunkwise', chunk
    if r['mode'] == 'recurrent':
        return 'ViR-S', 'recurrent (token loop)', '-'
    return 'ViR-S', 'parallel', '-'


def table_rows(results, machine):
    header = ['size', 'tokens', 'model', 'mode', 'chunk (eff. tokens)', 'latency ms (n)',
              'activation MiB', 'total MiB', 'GFLOP', 'GFLOP/s', '% matmul', 'CPU wait',
              'note']
    rows = []
    for r in results:
        model, mode, chunk = _mode_label(r)
        row = [f'{r["size"]}²', str(r['tokens']), model, mode, chunk]
        if r.get('status') == 'ok':
            note = f'= c={r["same_as"]}' if r.get('same_as') else ''
            if not r.get('hwm_reset', True):
                note = (note + ' ' if note else '') + 'peak incl. build'
            rows.append(row + [
                f'{_ms(r["latency_s"])} ({r["repeats"]})',
                f'{r["peak_activation"] / MIB:,.0f}', f'{r["peak_total"] / MIB:,.0f}',
                f'{r["flops"] / 1e9:,.1f}', f'{r["gflops_per_s"]:.1f}',
                f'{100 * r["gflops_per_s"] / machine["matmul_gflops"]:.0f}',
                '?' if r.get('cpu_wait') is None else f'{100 * r["cpu_wait"]:.0f}%', note])
        else:
            rows.append(row + ['-', '-', '-', f'{r["flops"] / 1e9:,.1f}', '-', '-', '-',
                               r.get('note', r.get('status', '?'))])
    return header, rows


def markdown_table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
    return '\n'.join(lines)


def text_table(header, rows):
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    fmt = '  '.join('{:<%d}' % w for w in widths)
    return '\n'.join([fmt.format(*header), fmt.format(*('-' * w for w in widths))]
                     + [fmt.format(*row) for row in rows])


def _ok(results, size, model=None, mode=None):
    return [r for r in results if r['size'] == size and r.get('status') == 'ok'
            and (model is None or r['model'] == model) and (mode is None or r['mode'] == mode)]


def _name(r):
    if r['model'] == 'vit':
        return 'ViT-S'
    return f'ViR-S chunkwise c={r["chunk"]}' if r['mode'] == 'chunkwise' else f'ViR-S {r["mode"]}'


def _find(results, size, model):
    return [r for r in results if r['size'] == size and r['model'] == model]


def _why_missing(results, size, model):
    rows = _find(results, size, model)
    if not rows:
        return f'{size}² not in --sizes'
    notes = sorted({r.get('note', r.get('status', '?')) for r in rows
                    if r.get('status') not in ('ok', 'not run')})
    return '; '.join(notes) if notes else 'not run'


def _efficiency(r, machine):
    return (f'{r["gflops_per_s"]:.1f} GFLOP/s = '
            f'{100 * r["gflops_per_s"] / machine["matmul_gflops"]:.0f}% of matmul peak')


def _contention(*rows):
    """A caution line when a compared row waited for a core (busy machine), else None."""
    waits = [(r, r.get('cpu_wait')) for r in rows if r.get('cpu_wait') is not None]
    if any(w > 0.05 for _, w in waits):
        detail = ', '.join(f'{_name(r)} {r["size"]}² {100 * w:.0f}%' for r, w in waits)
        return (f'caution: the machine was busy (CPU wait {detail}); these latencies are '
                f'inflated, rerun when it is quiet')
    return None


def target_checks(results, machine, args):
    """[(verdict, text, [why lines])] for the three targets."""
    checks = []

    # (1) 2048^2: best ViR-S mode vs ViT-S, speed-up >= 4x and peak memory <= ViT-S
    size = 2048
    vir, vit = _ok(results, size, 'vir'), _ok(results, size, 'vit')
    title = f'(1) {size}²: ViR-S best mode vs ViT-S: speed-up >= 4x and activation peak <= ViT-S'
    if not vir or not vit:
        missing = [] if vir else [f'ViR-S: {_why_missing(results, size, "vir")}']
        missing += [] if vit else [f'ViT-S: {_why_missing(results, size, "vit")}']
        verdict, why = 'N/A', missing
        vit_t = [r for r in _find(results, size, 'vit') if r.get('status') == 'timeout']
        if vir and vit_t:  # ViT-S timed out: say what the partial run implies, no verdict
            best, ref = min(vir, key=lambda r: r['latency_s']), vit_t[0]
            if ref.get('first_forward_s'):
                why.append(f'ViT-S first forward took {ref["first_forward_s"]:.0f}s vs '
                           f'{_name(best)} {best["latency_s"]:.1f}s -> speed-up roughly '
                           f'{ref["first_forward_s"] / best["latency_s"]:.1f}x (warm-up '
                           f'forward, not a median; memory not compared)')
            else:
                why.append(f'ViT-S did not finish one forward in {args.timeout:g}s vs '
                           f'{_name(best)} {best["latency_s"]:.1f}s -> speed-up > '
                           f'{args.timeout / best["latency_s"]:.0f}x (memory not compared)')
        checks.append((verdict, title, why))
    else:
        best, ref = min(vir, key=lambda r: r['latency_s']), vit[0]
        speedup = ref['latency_s'] / best['latency_s']
        mem_ratio = best['peak_activation'] / max(ref['peak_activation'], 1)
        ok = speedup >= 4 and best['peak_activation'] <= ref['peak_activation']
        text = (f'{title}: best {_name(best)} {_ms(best["latency_s"])} ms vs ViT-S '
                f'{_ms(ref["latency_s"])} ms -> {speedup:.2f}x; activation '
                f'{best["peak_activation"] / MIB:,.0f} MiB vs {ref["peak_activation"] / MIB:,.0f} '
                f'MiB ({mem_ratio:.2f}x; total {best["peak_total"] / MIB:,.0f} vs '
                f'{ref["peak_total"] / MIB:,.0f} MiB)')
        why = []
        if speedup < 4:
            flop_ratio = ref['flops'] / best['flops']
            why.append(f'why: ViT-S does {flop_ratio:.2f}x the FLOPs of {_name(best)} '
                       f'({ref["flops"] / 1e9:,.0f} vs {best["flops"] / 1e9:,.0f} GFLOP); speed-up '
                       f'= FLOP ratio x efficiency ratio = {flop_ratio:.2f} x '
                       f'{best["gflops_per_s"] / ref["gflops_per_s"]:.2f}; ViR-S '
                       f'{_efficiency(best, machine)}, ViT-S {_efficiency(ref, machine)}')
        if best['peak_activation'] > ref['peak_activation']:
            low = min(vir, key=lambda r: r['peak_activation'])
            why.append(f'why (memory): one token tensor is {best["tokens"] * DIM * 4 / MIB:.0f} '
                       f'MiB; the lowest ViR-S activation peak at {size}² is {_name(low)} '
                       f'{low["peak_activation"] / MIB:,.0f} MiB '
                       f'({_ms(low["latency_s"])} ms)')
        both = [r for r in vir if ref['latency_s'] / r['latency_s'] >= 4
                and r['peak_activation'] <= ref['peak_activation']]
        if not ok and both:
            ok = True
            why.append(f'the best-latency mode misses, but {_name(both[0])} meets both')
        why += [line for line in [_contention(best, ref)] if line]
        checks.append(('PASS' if ok else 'MISS', text, why))

    # (2) 224^2: ViR-S best mode latency <= 1.15x ViT-S
    size = 224
    vir, vit = _ok(results, size, 'vir'), _ok(results, size, 'vit')
    title = f'(2) {size}²: ViR-S best mode latency <= 1.15x ViT-S'
    if not vir or not vit:
        missing = [] if vir else [f'ViR-S: {_why_missing(results, size, "vir")}']
        missing += [] if vit else [f'ViT-S: {_why_missing(results, size, "vit")}']
        checks.append(('N/A', title, missing))
    else:
        best, ref = min(vir, key=lambda r: r['latency_s']), vit[0]
        ratio = best['latency_s'] / ref['latency_s']
        text = (f'{title}: best {_name(best)} {_ms(best["latency_s"])} ms vs ViT-S '
                f'{_ms(ref["latency_s"])} ms -> {ratio:.2f}x')
        why = []
        if ratio > 1.15:
            why.append(f'why: ViR-S does {best["flops"] / ref["flops"]:.2f}x the FLOPs of ViT-S '
                       f'and runs at {best["gflops_per_s"] / ref["gflops_per_s"]:.2f}x its '
                       f'efficiency (ViR-S {_efficiency(best, machine)}, ViT-S '
                       f'{_efficiency(ref, machine)}): the extra time is spent outside the '
                       f'matmuls (decay masks, small ops, Python per block/chunk)')
        why += [line for line in [_contention(best, ref)] if line]
        checks.append(('PASS' if ratio <= 1.15 else 'MISS', text, why))

    # (3) chunkwise activation-peak growth 1024^2 -> 2048^2 <= 4.5x
    title = '(3) chunkwise activation-peak growth 1024² -> 2048² <= 4.5x (every chunk size)'
    pairs = []
    for chunk in args.chunk_sizes:
        small = [r for r in _ok(results, 1024, 'vir', 'chunkwise') if r['chunk'] == chunk]
        large = [r for r in _ok(results, 2048, 'vir', 'chunkwise') if r['chunk'] == chunk]
        if small and large:
            pairs.append((chunk, small[0], large[0]))
    if not pairs:
        checks.append(('N/A', title, ['chunkwise not measured at both 1024² and 2048²: '
                                      f'{_why_missing(results, 1024, "vir")} / '
                                      f'{_why_missing(results, 2048, "vir")}']))
    else:
        growths = [(c, b['peak_activation'] / max(a['peak_activation'], 1), a, b)
                   for c, a, b in pairs]
        worst = max(growths, key=lambda g: g[1])
        text = title + ': ' + ', '.join(
            f'c={c}: {a["peak_activation"] / MIB:,.0f} -> {b["peak_activation"] / MIB:,.0f} MiB '
            f'= {g:.2f}x' for c, g, a, b in growths)
        why = []
        if worst[1] > 4.5:
            c, g, a, b = worst
            why.append(f'why: tokens grow {b["tokens"] / a["tokens"]:.2f}x; at c={c} the chunk '
                       f'grows from {a["chunk_tokens"]} to {b["chunk_tokens"]} tokens (whole '
                       f'rows: {a["chunk_tokens"] ** 2 * HEADS * 4 / MIB:.0f} -> '
                       f'{b["chunk_tokens"] ** 2 * HEADS * 4 / MIB:.0f} MiB per chunk score '
                       f'tensor) and the column states grow with the width')
        checks.append(('PASS' if worst[1] <= 4.5 else 'MISS', text, why))
    return checks


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print(f'matplotlib is not installed: no plot written to {path}')
        return False
    series = {}
    for r in results:
        if r.get('status') == 'ok':
            series.setdefault(series_key(r), []).append(r)
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    def order(item):
        first = item[1][0]
        rank = {'sdpa': 0, 'parallel': 1, 'chunkwise': 2, 'recurrent': 3}[first['mode']]
        return rank, first['chunk'] or 0

    dashes = ['-', '--', '-.', ':']
    for index, (name, rows) in enumerate(sorted(series.items(), key=order)):
        rows = sorted(rows, key=lambda r: r['size'])
        sizes = [r['size'] for r in rows]
        if name.startswith('ViT'):
            style = dict(marker='o', lw=2.6, color='black')
        elif rows[0]['mode'] == 'chunkwise':  # dashes keep identical runs (same chunks) visible
            style = dict(marker='s', lw=1.6, ls=dashes[index % len(dashes)], ms=5)
        else:
            style = dict(marker='^' if rows[0]['mode'] == 'parallel' else 'v', lw=1.6)
        axes[0].plot(sizes, [r['latency_s'] * 1e3 for r in rows], label=name, **style)
        axes[1].plot(sizes, [max(r['peak_activation'], MIB) / MIB for r in rows], label=name,
                     **style)
        axes[2].plot(sizes, [r['gflops_per_s'] for r in rows], label=name, **style)
    titles = ['forward latency (ms)', 'activation peak RSS (MiB)', 'achieved GFLOP/s']
    for ax, title in zip(axes, titles):
        ax.set_xscale('log', base=2)
        ax.set_yscale('log')
        ax.set_xlabel('image size (pixels per side)')
        ax.set_title(title)
        ax.grid(True, which='both', alpha=0.3)
        sizes = sorted({r['size'] for r in results})
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(s) for s in sizes])
    axes[0].legend(fontsize=8)
    fig.suptitle('ViR-S vs ViT-S backbone forward, CPU fp32 batch 1 '
                 '(missing points: OOM / timeout / skipped, see docs/benchmarks.md)', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def command_line(argv):
    return 'python tools/benchmark_backbone.py' + ''.join(f' {a}' for a in argv)


def report(results, machine, args, argv, elapsed):
    header, rows = table_rows(results, machine)
    checks = target_checks(results, machine, args)
    vit_info = next((r['info'] for r in results if r['model'] == 'vit' and r.get('info')), {})
    fused = vit_info.get('fused_attn')
    kernels = ', '.join(machine['sdpa_kernels']) or 'unknown'
    date = datetime.datetime.now().strftime('%Y-%m-%d %H:%M')
    probe_waits = ['?' if w is None else f'{100 * w:.0f}%'
                   for w in machine.get('matmul_probe_waits', [])]
    facts = [
        f'- date {date}; `{command_line(argv)}` ({elapsed / 60:.1f} min)',
        f'- torch {machine["torch"]}, timm {machine["timm"]}, Python {machine["python"]}; '
        f'{machine["cpu"]}, {machine["cores"]} cores, **{machine["threads"]} threads**; '
        f'1-min load average {machine.get("load_start")} at the start, '
        f'{machine.get("load_end")} at the end (other processes share the cores)',
        f'- measured fp32 matmul peak: **{machine["matmul_gflops"]:.1f} GFLOP/s** '
        f'(2048×2048×2048 `torch.mm`, best of 10, at the start and the end of this run: '
        f'{" / ".join(f"{g:.1f}" for g in machine.get("matmul_probes", []))} GFLOP/s, CPU '
        f'wait {" / ".join(probe_waits)})',
        f'- batch 1, fp32, eval, `torch.no_grad()`, '
        f'`{"model(x)" if args.classifier else "model.forward_features(x)"}`; '
        f'ViR-S mask `{args.mask}`; latency = median of n timed forwards after 1 warm-up',
        f'- ViT-S: `blocks[0].attn.fused_attn` = {fused} -> `F.scaled_dot_product_attention`, '
        f'CPU kernel `{kernels}`',
        '- memory: each row is a fresh process; activation = peak RSS (ru_maxrss, high-water '
        'mark reset after the build) minus RSS after model + input build; total = peak RSS',
        '- FLOPs: analytic count of the matmul/einsum/conv work each code path performs '
        '(formulas in the script docstring); GFLOP/s = FLOPs / median latency; '
        '% matmul = GFLOP/s / measured matmul peak',
        '- CPU wait = share of the timed forwards\' runnable time spent waiting for a core '
        '(/proc schedstat; other processes on the machine): above a few % the latency of that '
        'row is inflated and the comparison is unreliable',
        f'- recurrent = token-by-token Python loop through all blocks: only up to '
        f'{args.recurrent_max_size}² (`--recurrent-max-size`); chunk sizes are in tokens and '
        f'rounded down to whole patch rows (eff. tokens in brackets)',
    ]
    check_lines = []
    for verdict, text, why in checks:
        check_lines.append(f'- **{verdict}** {text}')
        check_lines += [f'  - {w}' for w in why]
    body = '\n'.join([
        '## Backbone forward latency and memory: ViR-S vs ViT-S (CPU)', '',
        *facts, '', markdown_table(header, rows), '', '### Target checks (this run)', '',
        *check_lines, '', f'![latency and memory vs resolution]({Path(args.plot).name})'])
    print()
    print(text_table(header, rows))
    print()
    print(f'matmul fp32 peak {machine["matmul_gflops"]:.1f} GFLOP/s (probes '
          f'{machine.get("matmul_probes")}); threads '
          f'{machine["threads"]}; torch {machine["torch"]}; ViT-S fused_attn={fused} ({kernels})')
    print()
    for verdict, text, why in checks:
        print(f'{verdict}: {text}')
        for w in why:
            print(f'      {w}')
    return body


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sizes', type=int, nargs='+', default=[224, 512, 1024, 2048, 4096],
                   help='square image sizes (pixels)')
    p.add_argument('--chunk-sizes', type=int, nargs='+', default=[64, 256, 1024, 4096],
                   help='chunkwise chunk sizes in tokens (rounded down to whole rows)')
    p.add_argument('--mask', default='causal_2d',
                   choices=['causal_1d', 'bidirectional_1d', 'causal_2d', 'bidirectional_2d'])
    p.add_argument('--repeats', type=int, default=3, help='timed forwards after one warm-up')
    p.add_argument('--timeout', type=float, default=600,
                   help='seconds per configuration (whole child: import, build, all forwards)')
    p.add_argument('--recurrent-max-size', type=int, default=224,
                   help='largest size run in recurrent mode (a Python loop over tokens: ~5 s '
                        'per forward at 224 on 2 cores, roughly 8-10x that at 384)')
    p.add_argument('--threads', type=int, default=os.cpu_count(),
                   help='torch threads (default: all cores)')
    p.add_argument('--classifier', action='store_true',
                   help='time model(x) (streaming modes keep only the class token) instead of '
                        'forward_features(x)')
    p.add_argument('--no-guard', action='store_true',
                   help='no memory/time skip guards and no address-space limit')
    p.add_argument('--check-flops', action='store_true',
                   help='also count FLOPs with FlopCounterMode (one extra forward) and compare')
    p.add_argument('--profile', action='store_true',
                   help='print a torch.profiler op table of one extra forward per configuration')
    p.add_argument('--md', default=str(REPO / 'docs' / 'benchmarks.md'),
                   help='markdown file whose backbone section is (re)written')
    p.add_argument('--plot', default=str(REPO / 'docs' / 'benchmark_backbone.png'))
    p.add_argument('--json', default=None, help='also dump raw results here')
    p.add_argument('--no-write', action='store_true', help='print only; write no files')
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['--_child']:
        cfg = json.loads(argv[2])
        return child_probe(cfg) if argv[1] == 'probe' else child_run(cfg)
    args = parse_args(argv)
    python = sys.executable
    started = time.time()
    records, code, err = launch(__file__, 'probe', {'threads': args.threads}, 300, python)
    if not records:
        sys.exit(f'machine probe failed (rc {code}):\n{err}')
    machine = records[-1]
    machine['load_start'] = loadavg()
    print(f'torch {machine["torch"]}, {machine["threads"]} threads, fp32 matmul '
          f'{machine["matmul_gflops"]:.1f} GFLOP/s, SDPA kernel {machine["sdpa_kernels"]}',
          flush=True)
    results = run_all(args, machine, python)
    # The matmul peak again at the end (a busy moment at the start would understate it): the
    # better of the two probes is the reference.
    first = machine['matmul_gflops']
    again, _, _ = launch(__file__, 'probe', {'threads': args.threads}, 300, python)
    if again and again[-1]['matmul_gflops'] > machine['matmul_gflops']:
        machine.update(matmul_gflops=again[-1]['matmul_gflops'],
                       matmul_best_s=again[-1]['matmul_best_s'])
    machine['load_end'] = loadavg()
    machine['matmul_probes'] = [first] + (
        [again[-1]['matmul_gflops']] if again else [])
    machine['matmul_probe_waits'] = [records[-1].get('matmul_cpu_wait')] + (
        [again[-1].get('matmul_cpu_wait')] if again else [])
    body = report(results, machine, args, argv, time.time() - started)
    if args.check_flops:
        print('\nFLOPs: analytic vs FlopCounterMode (ViT-S: the counter misses the CPU '
              'flash-attention kernel)')
        for r in results:
            if r.get('counted_flops'):
                print(f'  {r["size"]}² {series_key(r):28s} analytic {r["flops"] / 1e9:9.3f} '
                      f'counted {r["counted_flops"] / 1e9:9.3f} GFLOP '
                      f'(ratio {r["flops"] / r["counted_flops"]:.4f})')
    if args.json:
        Path(args.json).write_text(json.dumps({'machine': machine, 'results': results},
                                              indent=1, default=str))
    if not args.no_write:
        write_section(args.md, body, 'backbone')
        wrote_plot = plot(results, args.plot)
        print(f'\nwrote the backbone section of {args.md}'
              + (f' and {args.plot}' if wrote_plot else ''))


if __name__ == '__main__':
    main()
