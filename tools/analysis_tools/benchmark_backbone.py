#!/usr/bin/env python
"""Backbone benchmark: ViR-S (each retention mode, each mask) vs timm ViT-S (SDPA), CPU.

    .venv/bin/python tools/analysis_tools/benchmark_backbone.py           # full run (~45 min)
    .venv/bin/python tools/analysis_tools/benchmark_backbone.py --sizes 224 512 \\
        --train-sizes 512 --repeats 1
    .venv/bin/python tools/analysis_tools/benchmark_backbone.py --quick   # 224² only, prints only

Rows (batch 1, float32, `forward_features`, both models with dynamic_img_size=True):
- forward (eval, no grad) at every --sizes for ViT-S and, per --masks (default: the dense
  configs' `bidirectional_2d`, then `causal_2d`), ViR-S parallel (while its N x N scores fit)
  and chunkwise (tiles of --chunk cells);
- training step (train mode, forward + backward of sum(features^2)) at every --train-sizes for
  ViT-S and ViR-S parallel / chunkwise / auto with `bidirectional_2d`;
- ViR-S chunkwise `bidirectional_2d` with `retention_memory_budget` (BUDGET_ROWS: a forward
  at 2048², a training step at 1024²), when those sizes are run;
- with --compile S: inductor compile time and compiled vs eager latency at S x S.

Every row runs at each of --threads (default 1 and 2). Each row is a fresh child process
(tools/analysis_tools/benchlib.py), so its memory is its own: activation = peak RSS
(high-water mark reset after building model and input) minus RSS after the build.
Latency = median of --repeats runs after one warm-up. ATen ops and FLOPs are counted, not
estimated, on one extra run (or on the last timed one when a run takes > 20 s) by
`benchlib.OpCounter`: every dispatched ATen op, FLOPs from torch's own formulas
(torch.utils.flop_counter) per op, plus 4 L S d per head for the CPU flash-attention kernel
that torch's counter skips, and L^2 per column for triangular solves. "ret. kFLOP/tok-head"
counts one retention call (or ViT-S's attention, 4 N d) at the row's geometry, per token and
head. The children run with glibc's default allocator settings (--raised-mmap-threshold keeps
freed pages instead, which inflates peaks).

The results go to stdout and between `<!-- backbone:start/end -->` in docs/benchmarks.md (or
--out); the targets are the data tables below (RATIO_TARGETS, SCALING_TARGET, FLOPS_SPREAD,
MAX_OPS_PER_FORWARD, SMALL_IMAGES), each printed as PASS / MISS (N/A when its rows were
not run) with the measured numbers.
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import time

from benchlib import (MALLOC_ENV, MIB, add_output_args, cpu_name, emit, failure, launch,
                      loadavg, markdown_table, matmul_speed, mem_available, reset_peak_rss,
                      status_bytes, write_outputs)

VIR, VIT = 'vir_small_patch16_224', 'vit_small_patch16_224'
HEADS, DIM = 6, 384


# --------------------------------------------------------------------------------------------
# child: build one configuration, time it, count its ops
# --------------------------------------------------------------------------------------------
def build(cfg):
    import timm
    import torch
    import vir_dense  # noqa: F401
    torch.set_num_threads(cfg['threads'])
    torch.manual_seed(0)
    if cfg['model'] == 'vit':
        model = timm.create_model(VIT, dynamic_img_size=True)
    else:
        model = timm.create_model(VIR, dynamic_img_size=True, mask=cfg['mask'],
                                  retention_mode=cfg['mode'], chunk_size=cfg['chunk'],
                                  retention_memory_budget=cfg.get('budget'))
    image = torch.randn(1, 3, cfg['size'], cfg['size'])
    if cfg['kind'] == 'train':
        model.train()

        def step():
            model.zero_grad(set_to_none=True)
            model.forward_features(image).square().mean().backward()
    else:
        model.eval()

        def step():
            with torch.no_grad():
                model.forward_features(image)
    return model, step


def child_run(cfg):
    from benchlib import OpCounter
    model, step = build(cfg)
    if cfg.get('compile'):
        return child_compile(model, cfg)
    base = status_bytes('VmRSS')
    reset_peak_rss()
    start = time.perf_counter()
    step()
    warmup = time.perf_counter() - start
    counter = OpCounter()
    if warmup < 20:  # its own run: the counting mode's per-op Python cost stays out of timing
        with counter:
            step()
    repeats = max(1, min(cfg['repeats'], int(cfg['timeout'] * 0.8 / max(warmup, 1e-3)) - 2))
    times = []
    for index in range(repeats):
        counting = warmup >= 20 and index == repeats - 1
        start = time.perf_counter()
        if counting:
            with counter:
                step()
        else:
            step()
        times.append(time.perf_counter() - start)
    peak = status_bytes('VmHWM')
    emit(status='ok', latency_s=statistics.median(times), n=len(times),
         activation=peak - base, total=peak, ops=counter.ops, flops=counter.flops,
         retention_flops=retention_flops(cfg))


def retention_flops(cfg):
    """FLOPs per token and head of one attention / retention call at the row's geometry."""
    import torch
    from benchlib import OpCounter
    from vir_dense.ops.retention import decay_gammas, retention
    side = cfg['size'] // 16
    tokens, dim = side * side + 1, DIM // HEADS
    if cfg['model'] == 'vit':
        return 4 * tokens * dim
    q, k, v = (torch.randn(1, HEADS, tokens, dim) for _ in range(3))
    kwargs = dict(mask=cfg['mask'], mode=cfg['mode'], grid=(side, side), cls_token=True,
                  chunk_size=cfg['chunk'], gamma=decay_gammas(HEADS))
    counter = OpCounter()
    with torch.no_grad(), counter:
        retention(q, k, v, **kwargs)
    return counter.flops / tokens / HEADS


def child_compile(model, cfg):
    import torch
    eager = model.forward_features
    with torch.no_grad():
        eager(torch.randn(1, 3, cfg['size'], cfg['size']))
        image = torch.randn(1, 3, cfg['size'], cfg['size'])
        compiled = torch.compile(eager, fullgraph=True)
        start = time.perf_counter()
        out = compiled(image)
        compile_s = time.perf_counter() - start
        ref = eager(image)
        error = ((out - ref).norm() / ref.norm()).item()
        timed = {}
        for name, fn in (('eager', eager), ('compiled', compiled)):
            runs = []
            for _ in range(cfg['repeats']):
                start = time.perf_counter()
                fn(image)
                runs.append(time.perf_counter() - start)
            timed[name] = statistics.median(runs)
    emit(status='ok', compile_s=compile_s, eager_s=timed['eager'],
         compiled_s=timed['compiled'], error=error)


# --------------------------------------------------------------------------------------------
# parent: the configurations, the table, the targets
# --------------------------------------------------------------------------------------------
def configurations(args):
    for threads in args.threads:
        def cfg(kind, model, size, mode='-', mask='-', **extra):
            return dict(kind=kind, model=model, size=size, mode=mode, mask=mask,
                        chunk=args.chunk, threads=threads, repeats=args.repeats,
                        timeout=args.timeout, **extra)
        for size in args.sizes:
            yield cfg('forward', 'vit', size)
            for mask in args.masks:
                yield cfg('forward', 'vir', size, 'parallel', mask)
                yield cfg('forward', 'vir', size, 'chunkwise', mask)
        for size in args.train_sizes:
            yield cfg('train', 'vit', size)
            for mode in ('parallel', 'chunkwise', 'auto'):
                yield cfg('train', 'vir', size, mode, 'bidirectional_2d')
        for kind, size, mib in BUDGET_ROWS:
            if size in (args.sizes if kind == 'forward' else args.train_sizes):
                yield cfg(kind, 'vir', size, 'chunkwise', 'bidirectional_2d',
                          budget=int(mib * MIB))
        if args.compile:
            for mode in ('parallel', 'chunkwise'):
                yield cfg('compile', 'vir', args.compile, mode, 'bidirectional_2d',
                          compile=True)


def skip_reason(cfg, free):
    tokens = (cfg['size'] // 16) ** 2 + 1
    if cfg['mode'] == 'parallel' and cfg['kind'] != 'compile':
        need = tokens ** 2 * HEADS * 4 * (3 if cfg['kind'] == 'forward' else 12)
        if need > 0.8 * free:
            return f'skipped: N x N scores need ~{need / (1 << 30):.0f} GiB'
        if tokens > 8192:  # measured: > 20 s per block at 2048² (6.4 GB per N x N tensor)
            return 'skipped: N x N scores, > 4 min per forward'
    if cfg['model'] == 'vit' and cfg['size'] > 2048:
        return 'skipped: ViT-S at 4096² takes > 20 min per forward here (16x 2048²)'
    return None


def label(r):
    if r['model'] == 'vit':
        return 'ViT-S', 'attention (SDPA)'
    mode = r['mode'] + (f' c={r["chunk"]}' if r['mode'] != 'parallel' else '')
    if r.get('budget'):
        mode += f', budget {r["budget"] / MIB:g} MiB'
    return f'ViR-S {r["mask"]}', mode


def table(results):
    rows = []
    for r in results:
        if r['kind'] == 'compile':
            continue
        model, mode = label(r)
        if r['status'] != 'ok':
            cells = [r['note'], '-', '-', '-', '-', '-']
        else:
            cells = [f'{r["latency_s"] * 1e3:,.0f} ({r["n"]})', f'{r["activation"] / MIB:,.0f}',
                     f'{r["total"] / MIB:,.0f}', f'{r["ops"]:,}', f'{r["flops"] / 1e9:,.1f}',
                     f'{r["retention_flops"] / 1e3:,.0f}']
        rows.append([f'{r["size"]}²', f'{(r["size"] // 16) ** 2 + 1:,}', r['kind'],
                     r['threads'], model, mode, *cells])
    lines = markdown_table(['size', 'tokens', 'step', 'threads', 'model', 'mode',
                            'latency ms (n)', 'activation MiB', 'total MiB', 'ATen ops',
                            'GFLOP', 'ret. kFLOP/tok-head'], rows)
    compiled = [r for r in results if r['kind'] == 'compile']
    if compiled:
        rows = []
        for r in compiled:
            if r['status'] != 'ok':
                rows.append([f'ViR-S {r["mode"]}', f'{r["size"]}²', r['note'], '', '', '', ''])
                continue
            rows.append([f'ViR-S {r["mode"]}', f'{r["size"]}²', f'{r["compile_s"]:.0f}',
                         f'{r["eager_s"] * 1e3:,.0f}', f'{r["compiled_s"] * 1e3:,.0f}',
                         f'{r["eager_s"] / r["compiled_s"]:.2f}x', f'{r["error"]:.1e}'])
        lines += [''] + markdown_table(['torch.compile (inductor, fullgraph)', 'size',
                                        'compile s', 'eager ms', 'compiled ms', 'speed-up',
                                        'rel. error'], rows)
    return lines


def find(results, kind, size, model, mask=None, mode=None, threads=None, budget=None):
    """The measured rows that match; `budget` None: rows without a memory budget."""
    return [r for r in results if r['status'] == 'ok' and r['kind'] == kind and
            r['size'] == size and r['model'] == model and (mask is None or r['mask'] == mask)
            and (mode is None or r['mode'] == mode)
            and (threads is None or r['threads'] == threads) and r.get('budget') == budget]


# The acceptance targets, as data. ViR-S (bidirectional_2d, its fastest form) against ViT-S:
# (step, size, threads, time ratio at most, activation ratio at most or None: reported only).
RATIO_TARGETS = [
    ('forward', 2048, 1, 1 / 5, 1.0),
    ('forward', 2048, 2, 1 / 4, 1.0),
    ('train', 1024, 1, 1.0, 1.0),
    ('train', 1024, 2, 1.0, 1.0),
    ('train', 512, 1, 1.2, None),
]
SCALING_TARGET = (2048, 4096, 4.5, 4.5)  # ViR-S chunkwise: time and activation ratio at most
FLOPS_SPREAD = (512, 4096, 0.15)  # retention FLOPs per token-head within +-15% over sizes
MAX_OPS_PER_FORWARD = 2000  # dispatched ATen ops of one chunkwise ViR-S forward, every size
# Small images must not get slower. 'auto' (the configs' mode) runs the parallel form there, the
# same code as before; the tiled chunkwise form may cost at most this much more than it.
SMALL_IMAGES = (224, 512)
SMALL_IMAGE_SLACK = 1.1
# A user who asks for less memory: (step, size, retention_memory_budget in MiB); activation
# at most ViT-S's, time reported (more ops: the operator runs in head groups).
BUDGET_ROWS = [('forward', 2048, 128), ('train', 1024, 24)]


def ratio_check(results, kind, size, threads, max_time, max_memory, mask='bidirectional_2d'):
    """(name, ok or None when not measured, measured text) of one RATIO_TARGETS row."""
    speed = (f'>= {1 / max_time:g}x faster than' if max_time < 1 else
             f'time <= {max_time:g}x')
    memory = (' (memory reported)' if max_memory is None else ', activation <= ViT-S'
              if max_memory == 1 else f', activation <= {max_memory:g}x ViT-S')
    name = f'{size}² {kind}, {threads} thread(s) ({mask}): ViR-S {speed} ViT-S{memory}'
    vit = find(results, kind, size, 'vit', threads=threads)
    vir = find(results, kind, size, 'vir', mask, threads=threads)
    if not vit or not vir:
        return name, None, 'not measured'
    best = min(vir, key=lambda r: r['latency_s'])
    time_ratio = best['latency_s'] / vit[0]['latency_s']
    memory_ratio = best['activation'] / max(vit[0]['activation'], 1)
    text = (f'best ViR-S {best["mode"]} {best["latency_s"]:.2f} s vs ViT-S '
            f'{vit[0]["latency_s"]:.2f} s = {time_ratio:.2f}x time '
            f'({1 / time_ratio:.2f}x faster); activation {best["activation"] / MIB:,.0f} '
            f'vs {vit[0]["activation"] / MIB:,.0f} MiB = {memory_ratio:.2f}x')
    ok = time_ratio <= max_time and (max_memory is None or memory_ratio <= max_memory)
    return name, ok, text


def budget_checks(results, rows=BUDGET_ROWS):
    for kind, size, mib in rows:
        for threads in sorted({r['threads'] for r in results}):
            name = (f'{size}² {kind}, {threads} thread(s), retention_memory_budget={mib:g} MiB: '
                    'ViR-S activation <= ViT-S (time reported)')
            vit = find(results, kind, size, 'vit', threads=threads)
            vir = find(results, kind, size, 'vir', 'bidirectional_2d', 'chunkwise', threads,
                       budget=int(mib * MIB))
            if not vit or not vir:
                yield name, None, 'not measured'
                continue
            (a,), (b,) = vit, vir
            ratio = b['activation'] / max(a['activation'], 1)
            plain = find(results, kind, size, 'vir', 'bidirectional_2d', 'chunkwise', threads)
            extra = (f'; without the budget {plain[0]["activation"] / MIB:,.0f} MiB, '
                     f'{plain[0]["latency_s"]:.2f} s' if plain else '')
            yield name, ratio <= 1.0, (
                f'activation {b["activation"] / MIB:,.0f} vs {a["activation"] / MIB:,.0f} MiB '
                f'= {ratio:.2f}x; time {b["latency_s"]:.2f} vs {a["latency_s"]:.2f} s = '
                f'{b["latency_s"] / a["latency_s"]:.2f}x, {b["ops"]:,} ops{extra}')


def scaling_checks(results, target=SCALING_TARGET):
    small, big, max_time, max_memory = target
    for threads in sorted({r['threads'] for r in results}):
        name = (f'{big}² forward, {threads} thread(s): ViR-S chunkwise time and activation '
                f'<= {max_time:g}x / {max_memory:g}x its own {small}²')
        rows = [find(results, 'forward', size, 'vir', 'bidirectional_2d', 'chunkwise', threads)
                for size in (small, big)]
        if not all(rows):
            yield name, None, 'not measured'
            continue
        (a,), (b,) = rows
        time_ratio = b['latency_s'] / a['latency_s']
        memory_ratio = b['activation'] / max(a['activation'], 1)
        yield name, time_ratio <= max_time and memory_ratio <= max_memory, (
            f'{b["latency_s"]:.1f} s vs {a["latency_s"]:.1f} s = {time_ratio:.2f}x; '
            f'{b["activation"] / MIB:,.0f} vs {a["activation"] / MIB:,.0f} MiB = '
            f'{memory_ratio:.2f}x')


def flops_check(results, target=FLOPS_SPREAD):
    low, high, spread = target
    name = (f'retention FLOPs per token-head within +-{spread:.0%} of their mean, {low}² to '
            f'{high}² (chunkwise, every mask)')
    rows = [r for r in results if r['status'] == 'ok' and r['model'] == 'vir'
            and r['mode'] == 'chunkwise' and r['kind'] == 'forward' and low <= r['size'] <= high
            and not r.get('budget')]
    if not rows:
        return name, None, 'not measured'
    ok, parts = True, []
    for mask in sorted({r['mask'] for r in rows}):
        values = {r['size']: r['retention_flops'] for r in rows if r['mask'] == mask}
        mean = statistics.mean(values.values())
        ok &= all(abs(v / mean - 1) <= spread for v in values.values())
        parts.append(f'{mask}: ' + ', '.join(f'{size}² {v / 1e3:,.0f}k'
                                             for size, v in sorted(values.items())))
    return name, ok, '; '.join(parts)


def ops_check(results, limit=MAX_OPS_PER_FORWARD):
    name = f'ATen ops per ViR-S forward <= {limit:,} at every size (chunkwise, no budget)'
    rows = [r for r in results if r['status'] == 'ok' and r['model'] == 'vir'
            and r['kind'] == 'forward' and r['mode'] != 'parallel' and not r.get('budget')]
    if not rows:
        return name, None, 'not measured'
    worst = max(rows, key=lambda r: r['ops'])
    sizes = {r['size']: r['ops'] for r in rows if r['mask'] == 'bidirectional_2d'}
    return name, worst['ops'] <= limit, (
        f'most: {worst["ops"]:,} ops ({worst["mask"]}, {worst["size"]}²); bidirectional: '
        + ', '.join(f'{size}²: {ops:,}' for size, ops in sorted(sizes.items())))


def small_image_checks(results, sizes=SMALL_IMAGES, slack=SMALL_IMAGE_SLACK):
    for size in sizes:
        for threads in sorted({r['threads'] for r in results}):
            name = (f'{size}² forward, {threads} thread(s): tiled chunkwise <= {slack:g}x the '
                    'parallel form (unchanged; what auto runs here)')
            vit = find(results, 'forward', size, 'vit', threads=threads)
            rows = {mode: find(results, 'forward', size, 'vir', 'bidirectional_2d', mode,
                               threads) for mode in ('parallel', 'chunkwise')}
            if not all(rows.values()):
                yield name, None, 'not measured'
                continue
            chunk, parallel = rows['chunkwise'][0], rows['parallel'][0]
            ratio = chunk['latency_s'] / parallel['latency_s']
            text = f'{chunk["latency_s"] * 1e3:,.0f} vs {parallel["latency_s"] * 1e3:,.0f} ms'
            if vit:
                text += (f'; vs ViT-S {vit[0]["latency_s"] * 1e3:,.0f} ms: chunkwise '
                         f'{chunk["latency_s"] / vit[0]["latency_s"]:.2f}x, parallel '
                         f'{parallel["latency_s"] / vit[0]["latency_s"]:.2f}x')
            yield name, ratio <= slack, f'{ratio:.2f}x ({text})'


def target_lines(results):
    checks = ([ratio_check(results, *row) for row in RATIO_TARGETS] +
              list(scaling_checks(results)) + [flops_check(results), ops_check(results)] +
              list(small_image_checks(results)) + list(budget_checks(results)))
    return [f'- **{"N/A" if ok is None else "PASS" if ok else "MISS"}** {name}: {text}'
            for name, ok, text in checks]


def report(results, args, machine, elapsed, argv):
    lines = ['## Backbone: ViR-S vs ViT-S, forward and training step (CPU)', '',
             f'- {datetime.datetime.now():%Y-%m-%d %H:%M}; '
             '`python tools/analysis_tools/benchmark_backbone.py '
             f'{" ".join(argv)}` ({elapsed / 60:.1f} min)',
             f'- {machine["cpu"]}, {os.cpu_count()} cores, threads per row as given; '
             f'1-min load {machine["load_start"]} at the start, {machine["load_end"]} at the end; '
             'fp32 '
             f'matmul {machine["gflops"]:.0f} GFLOP/s (2048³)',
             '- batch 1, fp32, `forward_features`; forward = eval + no_grad; train = forward + '
             'backward of sum(features²); each row a fresh process, glibc allocator '
             + ('with `MALLOC_MMAP_THRESHOLD_` raised' if args.raised_mmap_threshold else
                'with its default settings') + ' (both models)',
             '- activation = peak RSS minus RSS after build; ops = ATen ops dispatched per step '
             '(counted); GFLOP = counted matmul work (torch formulas + CPU flash attention)',
             ''] + table(results) + ['', '### Targets (this run)', ''] + target_lines(results)
    return '\n'.join(lines)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[224, 512, 1024, 2048, 4096])
    parser.add_argument('--train-sizes', type=int, nargs='*', default=[512, 1024])
    parser.add_argument('--masks', nargs='+', default=['bidirectional_2d', 'causal_2d'])
    parser.add_argument('--chunk', type=int, default=256, help='cells per chunkwise tile')
    parser.add_argument('--compile', type=int, default=0, metavar='S',
                        help='also time inductor compile at S x S (0: no)')
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--raised-mmap-threshold', action='store_true',
                        help="raise glibc's mmap threshold in the children (freed pages kept)")
    parser.add_argument('--timeout', type=float, default=1200)
    parser.add_argument('--report-from', metavar='JSON',
                        help='write the report of an earlier run (its --json) without running')
    add_output_args(parser, '224² forward and training step only, 1 repeat')
    args = parser.parse_args(argv)
    if args.report_from:
        saved = json.loads(open(args.report_from).read())
        if isinstance(saved, list):  # a run that saved its rows only
            saved = dict(results=saved, elapsed=0, argv=['(rows of', args.report_from + ')'],
                         machine=dict(cpu=cpu_name(), load_start='?', load_end='?', gflops=0))
        write_outputs(args, report(saved['results'], args, saved['machine'],
                                   saved['elapsed'], saved['argv']), 'backbone', saved)
        return
    if args.quick:
        args.sizes, args.train_sizes, args.repeats, args.timeout = [224], [224], 1, 300
        args.threads = args.threads[:1]
    machine = dict(cpu=cpu_name(), load_start=loadavg(), gflops=matmul_speed()[0])
    started, results = time.time(), []
    for cfg in configurations(args):
        reason = skip_reason(cfg, mem_available())
        if reason:
            record = dict(status='skipped', note=reason)
        else:
            records, code, err = launch(__file__, 'run', cfg, cfg['timeout'] + 60,
                                        env=MALLOC_ENV if args.raised_mmap_threshold else None)
            record = records[-1] if records else failure(code, err, cfg['timeout'])
        results.append(dict(cfg, **record))
        print(table([results[-1]])[-1], flush=True)
    elapsed = time.time() - started
    machine['load_end'] = loadavg()
    write_outputs(args, report(results, args, machine, elapsed, sys.argv[1:]), 'backbone',
                  dict(results=results, machine=machine, elapsed=elapsed, argv=sys.argv[1:]))


if __name__ == '__main__':
    if sys.argv[1:2] == ['--_child']:
        child_run(json.loads(sys.argv[3]))
    else:
        main(sys.argv[1:])
