#!/usr/bin/env python
"""High-resolution semantic segmentation benchmark: whole-image UperNet + ViR-S in chunkwise
and parallel retention, vs sliding windows, vs the same UperNet on a timm ViT-S (CPU, fp32).

    .venv/bin/python tools/analysis_tools/benchmark_highres.py           # full run (hours)
    .venv/bin/python tools/analysis_tools/benchmark_highres.py --quick   # 256 px, all
                                                    # configurations, prints only (minutes)

What is measured: the time and peak memory of segmenting one random RGB image of S x S pixels
end to end with `vir_dense.apis.seg.segment_array` (what tools/infer_seg.py --scale none runs:
test pipeline at the image's own size, data preprocessor, model, label map at full resolution).
Batch 1, fp32, eval, no grad, random init (weights do not change the cost); the model is
configs/upernet_vir_s_ade20k.py (150 classes, 512-channel UPerHead) with:

  vir_chunkwise  ViR-S, chunkwise retention (tiles of `--chunk-size` cells), whole image
  vir_parallel   ViR-S, parallel retention ((Q K^T * D) V: N x N per head), whole image
  vir_slide      ViR-S, parallel retention in mmseg's sliding windows (512 crops, stride 341)
  vit_whole      timm vit_small_patch16_224 (dynamic_img_size; F.scaled_dot_product_attention)
                 with the same taps (blocks 3/5/7/11 rescaled x4/x2/x1/x0.5) and head, whole image
  vit_slide      the same ViT-S in sliding windows

Whole-image mode runs vir_dense's memory-lean UPerHead and banded logit upsampling (mmseg's
results without its ~9 stride-4 maps of 512 channels and 150 x S x S logits); slide mode the
windows of mmseg with in-place accumulation (the 150 x S x S sum of window logits).

Each (configuration, size) runs in a fresh subprocess: build, warm up once at 128 px, reset the
peak-RSS mark (/proc/self/clear_refs), time the segmentation (median of up to `--repeats` runs
while a run takes < 20 s). "peak" is the child's VmHWM (Python, torch, model, activations),
"act" peak minus the RSS before the timed runs. An address-space limit (RLIMIT_AS: free memory
at launch, capped by `--mem-gb`) turns an oversized allocation into an "OOM" inside torch rather
than a visit from the kernel's OOM killer. A configuration whose memory estimate
(`estimate_memory`: the retention operator's own formula, `transient_elements` at its own tile
geometry, for the chunkwise term; computed in the probe child, so this process never imports
vir_dense or mmseg) exceeds that budget is skipped; one that ran out of memory or time is not
tried at larger sizes. The matmul GFLOP/s of the machine is measured at the start and the end
(CPU speed varies with load): compare configurations within a run, not times across runs.

Output: a table on stdout and between `<!-- highres:start -->` / `<!-- highres:end -->` in
docs/benchmarks.md (or --out; the rest of the file is left as it is), and a log-log plot of
latency and peak memory vs size beside it, benchmark_highres.png (or --plot).
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

from benchlib import (GIB, REPO, add_output_args, cpu_name, emit, failure, is_oom, launch,
                      limit_address_space, markdown_table, matmul_speed, mem_available,
                      output_path, plot_loglog, register_timm_vit_taps, reset_peak_rss,
                      status_bytes, write_outputs)

CONFIG = REPO / 'configs' / 'upernet_vir_s_ade20k.py'

# name: backbone, retention form, test mode, label, plot style
CONFIGS = {
    'vir_chunkwise': dict(backbone='vir', retention='chunkwise', mode='whole',
                          label='ViR-S chunkwise, whole', style=dict(marker='s', lw=2.5)),
    'vir_parallel': dict(backbone='vir', retention='parallel', mode='whole',
                         label='ViR-S parallel, whole', style=dict(marker='^')),
    'vir_slide': dict(backbone='vir', retention='parallel', mode='slide',
                      label='ViR-S parallel, slide 512/341', style=dict(marker='v', ls='--')),
    'vit_whole': dict(backbone='vit', retention=None, mode='whole', label='ViT-S, whole',
                      style=dict(marker='o', color='black', lw=2)),
    'vit_slide': dict(backbone='vit', retention=None, mode='slide',
                      label='ViT-S, slide 512/341', style=dict(marker='o', color='grey', ls='--')),
}
DIM, HEADS, PATCH = 384, 6, 16
HEAD_CHANNELS, NUM_CLASSES = 512, 150
CROP, STRIDE = 512, 341


# --------------------------------------------------------------------------------------------
# Memory estimate for the skip guard (deliberately on the generous side); runs in the probe
# child. The chunkwise term is the operator's own formula at the operator's tile geometry.
# --------------------------------------------------------------------------------------------
def _window_bytes(size, backbone, retention, chunk):
    """Activations of one whole-image forward at `size` (lean head, banded upsampling)."""
    from vir_dense.ops.retention import make_layout
    from vir_dense.ops.retention.chunkwise import transient_elements
    cols = -(-size // PATCH)
    # bidirectional ViR runs its class token through the blocks: one more grid row
    layout = make_layout('bidirectional_2d', cols * cols + 1, (cols, cols), cls_token=True)
    tokens = layout.num_tokens
    stride4 = (-(-size // 4)) ** 2
    tokens_b = 24 * tokens * DIM * 4            # token tensors, qkv, MLP hidden, 4 taps
    if backbone == 'vit':
        retention_b = 0                         # SDPA's CPU flash kernel: no N x N tensor
    elif retention == 'parallel':
        retention_b = 3 * HEADS * tokens * tokens * 4   # mask, scores, masked scores
    else:
        retention_b = 4 * transient_elements(1, HEADS, layout.grid_rows, cols, DIM // HEADS,
                                             chunk, causal=False)
    pyramid = stride4 * DIM * 4 * 2             # the x4 tap (and its making)
    head = stride4 * HEAD_CHANNELS * 4 * 3      # lean UPerHead peak
    logits = stride4 * NUM_CLASSES * 4
    # Retention's transients are freed before the pyramid and head run: the peak is the larger
    # of the two phases (at 4096² chunkwise both are ~12 GB; measured peak 10.7 GiB in all).
    return tokens_b + max(retention_b, pyramid + head + logits)


def estimate_memory(name, size, chunk):
    """Rough peak RSS in bytes of one configuration at `size` (process baseline included)."""
    cfg = CONFIGS[name]
    base = int(1.2 * GIB)                       # interpreter, torch, mmseg, model weights
    image = size * size * 3 * (1 + 4 + 4)       # uint8 image, float input, normalised copy
    band = (1 << 24) * 4 * 2
    if cfg['mode'] == 'slide':
        full_logits = NUM_CLASSES * size * size * 4 + size * size * 4
        window = _window_bytes(min(size, CROP), cfg['backbone'], cfg['retention'], chunk)
        return base + image + full_logits + window + band
    return base + image + _window_bytes(size, cfg['backbone'], cfg['retention'], chunk) + band


# --------------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------------
def child_probe(cfg):
    """fp32 2048^3 matmul GFLOP/s (best of 10) with the benchmark's thread count, and the
    memory estimate of each (configuration, size) in cfg['plan']."""
    import torch
    torch.set_num_threads(cfg['threads'])
    gflops, _ = matmul_speed()
    estimates = {f'{name}@{size}': estimate_memory(name, size, cfg['chunk'])
                 for name, size in cfg.get('plan', [])}
    emit(status='ok', gflops=gflops, threads=torch.get_num_threads(), torch=torch.__version__,
         cpu=cpu_name(), cores=os.cpu_count(), estimates=estimates)


def child_run(cfg):
    import gc
    import resource
    import numpy as np
    import torch
    torch.set_num_threads(cfg['threads'])
    from mmengine.config import Config

    from vir_dense.apis.seg import build_inference_pipeline, init_segmentor, segment_array
    spec = CONFIGS[cfg['name']]
    config = Config.fromfile(str(CONFIG))
    if spec['backbone'] == 'vit':
        register_timm_vit_taps()
        config.model.backbone = dict(type='TimmViTTaps', model_name='vit_small_patch16_224',
                                     out_indices=(3, 5, 7, 11))
    model = init_segmentor(config, None, device='cpu', retention_mode=spec['retention'],
                           chunk_size=cfg['chunk'] if spec['retention'] else None,
                           mode=spec['mode'])
    if spec['mode'] == 'slide':
        model.test_cfg.crop_size, model.test_cfg.stride = (CROP, CROP), (STRIDE, STRIDE)
    info = dict(test_cfg=dict(model.test_cfg))
    backbone = model.backbone
    if hasattr(backbone, 'retention_mode'):
        info.update(retention_mode=backbone.retention_mode, chunk_size=backbone.chunk_size,
                    mask=backbone.mask)
    else:
        info['fused_attn'] = bool(getattr(backbone.vit.blocks[0].attn, 'fused_attn', False))
    pipeline = build_inference_pipeline(model.cfg, 'none')
    rng = np.random.default_rng(0)
    with torch.no_grad():
        segment_array(model, rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
                      pipeline=pipeline)  # warm-up: kernels, caches
    image = rng.integers(0, 256, (cfg['size'], cfg['size'], 3), dtype=np.uint8)
    gc.collect()
    rss_before = status_bytes('VmRSS')
    hwm_reset = reset_peak_rss()  # the peak below is the segmentation's own
    if cfg.get('mem_budget'):
        limit_address_space(cfg['mem_budget'] + GIB // 2)
    emit(event='built', rss_before=rss_before, info=info)
    # The backbone's share of each run, timed by forward hooks (summed over the windows in
    # slide mode).
    backbone_calls, backbone_times, starts = [], [], []
    backbone.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))

    def backbone_done(*_):
        backbone_calls.append(time.perf_counter() - starts[-1])
        emit(event='backbone', seconds=backbone_calls[-1])

    backbone.register_forward_hook(backbone_done)
    times = []
    try:
        with torch.no_grad():
            while True:
                start = time.perf_counter()
                backbone_calls.clear()
                segment_array(model, image, pipeline=pipeline)  # the label map is dropped
                times.append(time.perf_counter() - start)
                backbone_times.append(sum(backbone_calls))
                emit(event='run', seconds=times[-1])
                if len(times) >= cfg['repeats'] or times[-1] > 20:
                    break
    except (RuntimeError, MemoryError) as error:
        if is_oom(error):
            emit(status='OOM', note=str(error).splitlines()[0][:200], info=info)
            return
        raise
    peak = status_bytes('VmHWM') or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    emit(status='ok', latency_s=statistics.median(times), times_s=times, peak=peak,
         backbone_s=statistics.median(backbone_times) if backbone_times else None,
         act=peak - rss_before, rss_before=rss_before, hwm_reset=hwm_reset, info=info)


# --------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------
def run_one(name, size, args, budget):
    cfg = dict(name=name, size=size, chunk=args.chunk_size, threads=args.threads,
               repeats=args.repeats, mem_budget=budget)
    started = time.perf_counter()
    records, code, err = launch(__file__, 'run', cfg, args.timeout,
                                env=dict(PYTHONWARNINGS='ignore'))
    result = dict(name=name, size=size, wall_s=time.perf_counter() - started)
    final = next((r for r in reversed(records) if 'status' in r), None)
    if final is not None:
        return dict(result, **final)
    # Died or timed out: what the events say about the first run (the backbone calls before
    # it finished, all of them if it did not).
    events = [r.get('event') for r in records] + ['run']
    first = records[:events.index('run')]
    runs = [r['seconds'] for r in records if r.get('event') == 'run']
    backbone = sum(r['seconds'] for r in first if r.get('event') == 'backbone')
    if backbone:
        result['backbone_s'] = backbone
    result.update(failure(code, err, args.timeout))
    if code == 'timeout':
        result['timeout_s'] = args.timeout
        result['note'] += ''.join([f' (1st run {runs[0]:.0f} s)' if runs else '',
                                   f' (backbone {backbone:.0f} s so far)' if backbone else ''])
    return result


def run_all(args):
    plan = [(name, size) for size in args.sizes for name in args.configs]
    probe, _, _ = launch(__file__, 'probe', dict(threads=args.threads, chunk=args.chunk_size,
                                                 plan=plan), 300)
    machine = probe[-1] if probe else dict(gflops=float('nan'), threads=args.threads)
    estimates = machine.pop('estimates', {})
    print(f'fp32 matmul: {machine.get("gflops", float("nan")):.1f} GFLOP/s with '
          f'{machine.get("threads")} threads', flush=True)
    results, failed = [], set()
    for size in args.sizes:
        for name in args.configs:
            budget = mem_available()
            if args.mem_gb:
                budget = min(budget, int(args.mem_gb * GIB))
            estimate = estimates.get(f'{name}@{size}')  # None: the probe failed, no guard
            if name in failed:
                result = dict(name=name, size=size, status='skipped',
                              note='skipped (failed at a smaller size)')
            elif args.guard and estimate and estimate > budget:
                result = dict(name=name, size=size, status='skipped',
                              note=f'skipped: needs ~{estimate / GIB:.0f} GiB '
                                   f'(> {budget / GIB:.0f} GiB free)')
            else:
                print(f'  {CONFIGS[name]["label"]:<32} {size:>5}px ...', end='', flush=True)
                result = run_one(name, size, args, budget)
            result['estimate'] = estimate
            if result['status'] in ('OOM', 'timeout', 'error'):
                failed.add(name)
            print(f'\r  {CONFIGS[name]["label"]:<32} {size:>5}px  {cell(result)}', flush=True)
            results.append(result)
    probe, _, _ = launch(__file__, 'probe', dict(threads=args.threads, chunk=args.chunk_size),
                         300)
    machine['gflops_end'] = probe[-1]['gflops'] if probe else float('nan')
    return results, machine


def cell(r):
    if r.get('status') != 'ok':
        return r.get('note', r.get('status', '?'))
    backbone = f' (backbone {r["backbone_s"]:.1f} s)' if r.get('backbone_s') else ''
    return (f'{r["latency_s"]:.2f} s{backbone} / {r["peak"] / GIB:.2f} GiB '
            f'(+{r["act"] / GIB:.2f})')


def _find(results, name, size):
    return next((r for r in results if r['name'] == name and r['size'] == size
                 and r.get('status') == 'ok'), None)


def ratio_cell(r, base):
    """Latency and peak of `r` relative to ViR-S chunkwise's at the same size."""
    if not (r and base):
        return '-'
    text = (f'{r["latency_s"] / base["latency_s"]:.2f}x time, '
            f'{r["peak"] / base["peak"]:.2f}x mem')
    if r.get('backbone_s') and base.get('backbone_s'):
        text += f', backbone {r["backbone_s"] / base["backbone_s"]:.1f}x'
    return text


def report(results, machine, args, argv, elapsed, plot_path):
    sizes = sorted({r['size'] for r in results})
    names = args.configs
    lines = [
        '## High-resolution segmentation: whole-image ViR-S (chunkwise) vs parallel, sliding '
        'window and ViT-S', '',
        '`python tools/analysis_tools/benchmark_highres.py' + ''.join(f' {a}' for a in argv) + '`',
        f'({datetime.datetime.now():%Y-%m-%d %H:%M}, {elapsed / 60:.1f} min; '
        f'{machine.get("cpu", "?")}, {machine.get("cores", "?")} cores, '
        f'{machine.get("threads", "?")} torch threads, torch {machine.get("torch", "?")}; '
        f'fp32 matmul {machine.get("gflops", float("nan")):.0f} GFLOP/s at the start, '
        f'{machine.get("gflops_end", float("nan")):.0f} at the end).', '',
        'UperNet (configs/upernet_vir_s_ade20k.py: 150 classes, 512-channel UPerHead), random '
        'init, batch 1, fp32, eval, no grad; one S x S image end to end with '
        '`vir_dense.apis.seg.segment_array` (as `tools/infer_seg.py --scale none`): '
        f'chunkwise tiles of {args.chunk_size} cells, slide = 512 crops, stride '
        '341. Cells: latency (median of the timed runs) (the backbone\'s part of it, timed by '
        'forward hooks; the rest is the shared UPerHead, pipeline and upsampling) / peak RSS '
        'of a fresh process (Python, torch and weights included, ~1 GiB) (+ its increase '
        'during the timed runs).', '']

    def result(name, size):
        return next((r for r in results if r['name'] == name and r['size'] == size), None)
    lines += markdown_table(
        ['size'] + [CONFIGS[n]['label'] for n in names],
        [[f'{size}x{size}'] + [cell(result(n, size)) if result(n, size) else '-' for n in names]
         for size in sizes], align='---:')
    lines += ['', 'Ratios (same run): latency and peak memory of each configuration divided by '
              "ViR-S chunkwise's.", '']
    others = [n for n in names if n != 'vir_chunkwise']
    if 'vir_chunkwise' in names and others:
        lines += markdown_table(
            ['size'] + [CONFIGS[n]['label'] for n in others],
            [[f'{size}x{size}'] + [ratio_cell(_find(results, n, size),
                                              _find(results, 'vir_chunkwise', size))
                                   for n in others] for size in sizes], align='---:')
    if plot_path and REPO in Path(plot_path).resolve().parents:
        plot_path = Path(plot_path).resolve().relative_to(REPO)
    plot_note = f' Plot: `{plot_path}`.' if plot_path else ''
    lines += ['', *target_checks(results, sizes), '',
              'Guards: a configuration whose estimated peak exceeds the free memory is skipped; '
              'one that ran out of memory or time is not tried at larger sizes.' + plot_note]
    return '\n'.join(lines)


# ViT-S whole-image inference at the largest size takes at least this many times ViR-S
# chunkwise's latency, end to end (the "several times slower" target).
VIT_SLOWER_AT_LEAST = 3.0


def target_checks(results, sizes):
    big = max(sizes)
    vir = _find(results, 'vir_chunkwise', big)
    vit = next((r for r in results if r['name'] == 'vit_whole' and r['size'] == big), None)
    lines = [f'Targets at {big}x{big}:']
    if vir:
        lines.append(f'- ViR-S chunkwise whole-image inference fits: yes, '
                     f'{vir["latency_s"]:.1f} s, peak {vir["peak"] / GIB:.2f} GiB.')
    else:
        lines.append('- ViR-S chunkwise whole-image inference fits: NO (' + next(
            (cell(r) for r in results if r['name'] == 'vir_chunkwise' and r['size'] == big),
            'not run') + ').')
    if vit is None:
        lines.append('- ViT-S whole image: not run.')
    elif vit.get('status') != 'ok':
        bound = (f'; at least {vit["timeout_s"] / vir["latency_s"]:.0f}x the time of ViR-S '
                 'chunkwise' if vir and vit.get('timeout_s') else '')
        lines.append(f'- ViT-S whole image: does not complete ({cell(vit)}{bound}).')
    elif vir:
        ratio = vit['latency_s'] / vir['latency_s']
        backbone = (f'; backbones alone {vit["backbone_s"] / vir["backbone_s"]:.1f}x'
                    if vit.get('backbone_s') and vir.get('backbone_s') else '')
        lines.append(f'- ViT-S whole image: {ratio:.1f}x the time of ViR-S chunkwise '
                     f'({vit["latency_s"]:.1f} s), peak {vit["peak"] / GIB:.2f} GiB{backbone}; '
                     f'target "several times slower" (>= {VIT_SLOWER_AT_LEAST:g}x end to end) '
                     f'{"met" if ratio >= VIT_SLOWER_AT_LEAST else "NOT met"}.')
    return lines


def plot(results, names, path):
    series = []
    for name in names:
        mine = [r for r in results if r['name'] == name]
        points = [dict(x=r['size'], latency=r['latency_s'], peak=r['peak'] / GIB)
                  for r in mine if r.get('status') == 'ok']
        failures = [(r['size'], r['status']) for r in mine if r.get('status') in ('OOM', 'timeout')]
        series.append((CONFIGS[name]['label'], CONFIGS[name]['style'], points, failures))
    return plot_loglog(path, series, [('latency', 'latency (s)'), ('peak', 'peak RSS (GiB)')],
                       'image size (pixels per side)',
                       'UperNet whole-image vs sliding-window inference, CPU fp32 batch 1 '
                       '(missing points: OOM / timeout / skipped, see docs/benchmarks.md)')


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog=__doc__.split('\n\n', 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', type=int, nargs='+', default=[512, 1024, 2048, 4096],
                        help='image sides in pixels (default: %(default)s)')
    parser.add_argument('--configs', nargs='+', choices=list(CONFIGS), default=list(CONFIGS),
                        help='configurations (default: all)')
    parser.add_argument('--chunk-size', type=int, default=256,
                        help='chunkwise cells per tile (default: %(default)s, 16 x 16 tiles)')
    parser.add_argument('--timeout', type=float, default=3600,
                        help='seconds per configuration and size (default: %(default)s)')
    parser.add_argument('--repeats', type=int, default=3,
                        help='timed runs while one takes < 20 s (default: %(default)s)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads (default: torch\'s default)')
    parser.add_argument('--mem-gb', type=float, default=24,
                        help='memory budget per configuration, GiB; also capped by the free '
                             'memory (default: %(default)s)')
    parser.add_argument('--no-guard', dest='guard', action='store_false',
                        help='run configurations even if their memory estimate is too big')
    parser.add_argument('--plot', help='plot file (default: benchmark_highres.png beside the '
                                       'Markdown file)')
    add_output_args(parser, '--sizes 256 --repeats 1 --timeout 600: every configuration once')
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.timeout = [256], 1, 600
    if args.threads is None:
        import torch
        args.threads = torch.get_num_threads()
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['--_child']:
        {'run': child_run, 'probe': child_probe}[argv[1]](json.loads(argv[2]))
        return 0
    args = parse_args(argv)
    out = output_path(args)
    plot_path = args.plot or (out.with_name('benchmark_highres.png') if out else None)
    started = time.perf_counter()
    results, machine = run_all(args)
    body = report(results, machine, args, argv, time.perf_counter() - started, plot_path)
    write_outputs(args, '\n' + body, 'highres', dict(machine=machine, results=results))
    if plot_path and plot(results, args.configs, plot_path):
        print(f'wrote {plot_path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
