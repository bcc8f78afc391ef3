#!/usr/bin/env python
"""High-resolution semantic segmentation benchmark: whole-image UperNet + ViR-S in chunkwise
and parallel retention, vs sliding windows, vs the same UperNet on a timm ViT-S (CPU, fp32).

    .venv/bin/python tools/benchmark_highres.py                          # full run (long)
    .venv/bin/python tools/benchmark_highres.py --sizes 256 512 --timeout 600   # quick check

What is measured
----------------
The time and peak memory of segmenting one random RGB image of S x S pixels, end to end, with
`vir_dense.apis.seg.segment_array` (what tools/infer_seg.py runs): test pipeline at the
image's own size (`--scale none`), data preprocessor, model, logits -> label map at full
resolution. Batch 1, float32, eval mode, no grad, random init (no ViR weights exist; weights do
not change the cost). The model is configs/upernet_vir_s_ade20k.py (150 classes, UPerHead with
512 channels, FCN auxiliary head unused at test time) with:

  vir_chunkwise  ViR-S, chunkwise retention (`--chunk-size` tokens, whole rows), whole image
  vir_parallel   ViR-S, parallel retention ((Q K^T * D) V: N x N per head), whole image
  vir_slide      ViR-S, parallel retention in mmseg's sliding windows (512 crops, stride 341)
  vit_whole      timm vit_small_patch16_224 (dynamic_img_size; F.scaled_dot_product_attention)
                 with the same taps (blocks 3/5/7/11 rescaled x4/x2/x1/x0.5) and head, whole image
  vit_slide      the same ViT-S in sliding windows

Whole-image mode runs vir_dense's memory-lean UPerHead forward and banded logit upsampling
(same results as mmseg's; mmseg's own whole-image path would hold ~9 stride-4 maps of 512
channels and the 150 x S x S logits), slide mode the same windows as mmseg with in-place
accumulation; both keep full-size logits only where mmseg's method needs them (slide: the
150 x S x S sum of window logits).

Each (configuration, size) runs in a fresh subprocess: build the model, warm up once at 128 px,
reset the kernel's peak-RSS mark (/proc/self/clear_refs), then time the segmentation
(one run; up to `--repeats` runs, median, while a run takes < 20 s). "peak" is the child's
VmHWM after the timed runs (its whole RSS: Python, torch, model and activations); "act" is
peak minus the RSS before the timed runs. The child gets an address-space limit (RLIMIT_AS)
of its current size plus the memory free at launch (capped by `--mem-gb`), so an oversized
allocation fails inside torch ("OOM") instead of calling the kernel's OOM killer. A
configuration whose rough memory estimate (see `estimate_memory`) exceeds that budget is
skipped, and one that ran out of memory or time at a size is not tried at larger sizes.
The machine's fp32 matmul GFLOP/s is measured in the same run (CPU speed varies with load):
compare ratios between configurations, not absolute times across runs.

Output: a table on stdout and between `<!-- highres:start -->` / `<!-- highres:end -->` in
docs/benchmarks.md (the rest of the file is left as it is), and a plot
docs/benchmark_highres.png (latency and peak memory vs resolution, log scales).
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

from benchlib import (GIB, REPO, cpu_name, emit, failure, is_oom, launch, limit_address_space,
                      matmul_speed, mem_available, reset_peak_rss, status_bytes,
                      write_section)

CONFIG = REPO / 'configs' / 'upernet_vir_s_ade20k.py'

CONFIGS = {
    'vir_chunkwise': dict(backbone='vir', retention='chunkwise', mode='whole',
                          label='ViR-S chunkwise, whole'),
    'vir_parallel': dict(backbone='vir', retention='parallel', mode='whole',
                         label='ViR-S parallel, whole'),
    'vir_slide': dict(backbone='vir', retention='parallel', mode='slide',
                      label='ViR-S parallel, slide 512/341'),
    'vit_whole': dict(backbone='vit', retention=None, mode='whole', label='ViT-S, whole'),
    'vit_slide': dict(backbone='vit', retention=None, mode='slide',
                      label='ViT-S, slide 512/341'),
}
DIM, HEADS, DEPTH, PATCH = 384, 6, 12, 16
HEAD_CHANNELS, NUM_CLASSES = 512, 150
CROP, STRIDE = 512, 341


# --------------------------------------------------------------------------------------------
# Estimates (for the skip guard; deliberately on the generous side)
# --------------------------------------------------------------------------------------------
def _ceil_div(a, b):
    return -(-a // b)


def _window_bytes(size, backbone, retention, chunk):
    """Activations of one whole-image forward at `size` (lean head, banded upsampling)."""
    cols = _ceil_div(size, PATCH)
    tokens = cols * cols
    stride4 = _ceil_div(size, 4) ** 2
    tokens_b = 24 * tokens * DIM * 4            # token tensors, qkv, MLP hidden, 4 taps
    if backbone == 'vit':
        quadratic = 0                           # SDPA's CPU flash kernel: no N x N tensor
    elif retention == 'parallel':
        quadratic = 3 * HEADS * tokens * tokens * 4   # mask, scores, masked scores
    else:
        chunk_tokens = min(max(1, chunk // cols), cols) * cols  # square image: rows == cols
        quadratic = 3 * HEADS * chunk_tokens ** 2 * 4 + 2 * HEADS * cols * 64 * 64 * 4
    pyramid = stride4 * DIM * 4 * 2             # the x4 tap (and its making)
    head = stride4 * HEAD_CHANNELS * 4 * 3      # lean UPerHead peak
    logits = stride4 * NUM_CLASSES * 4
    return tokens_b + quadratic + pyramid + head + logits


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
def _register_timm_vit():
    """`TimmViTTaps`: timm ViT-S giving the same four tapped, rescaled maps as ViR's taps."""
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
                stride = int(PATCH / scale)
                outs.append(rescale(feat)[..., :-(-height // stride), :-(-width // stride)])
            return tuple(outs)

    MODELS.register_module(module=TimmViTTaps, force=True)
    return TimmViTTaps


def child_probe(cfg):
    """fp32 2048^3 matmul GFLOP/s (best of 10) with the benchmark's thread count."""
    import torch
    torch.set_num_threads(cfg['threads'])
    gflops, _ = matmul_speed()
    emit(status='ok', gflops=gflops, threads=torch.get_num_threads(), torch=torch.__version__,
         cpu=cpu_name(), cores=os.cpu_count())


def child_run(cfg):
    import gc
    import resource
    import numpy as np
    import torch
    torch.set_num_threads(cfg['threads'])
    sys.path.insert(0, str(REPO))
    from mmengine.config import Config

    from vir_dense.apis.seg import build_inference_pipeline, init_segmentor, segment_array
    spec = CONFIGS[cfg['name']]
    config = Config.fromfile(str(CONFIG))
    if spec['backbone'] == 'vit':
        _register_timm_vit()
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
                labels = segment_array(model, image, pipeline=pipeline)
                times.append(time.perf_counter() - start)
                backbone_times.append(sum(backbone_calls))
                emit(event='run', seconds=times[-1])
                del labels
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
        result.update(final)
        return result
    runs = [r['seconds'] for r in records if r.get('event') == 'run']
    # Backbone calls before the first finished run (all of them when it did not finish).
    first_run = next((i for i, r in enumerate(records) if r.get('event') == 'run'),
                     len(records))
    backbone_calls = [r['seconds'] for r in records[:first_run] if r.get('event') == 'backbone']
    if backbone_calls:
        result['backbone_s'] = sum(backbone_calls)
    result.update(failure(code, err, args.timeout))
    if code == 'timeout':
        result['timeout_s'] = args.timeout
        if runs:
            result['note'] += f' (1st run {runs[0]:.0f} s)'
        if backbone_calls:
            result['note'] += f' (backbone {sum(backbone_calls):.0f} s so far)'
    return result


def run_all(args):
    probe, _, _ = launch(__file__, 'probe', dict(threads=args.threads), 300)
    machine = probe[-1] if probe else dict(gflops=float('nan'), threads=args.threads)
    print(f'fp32 matmul: {machine.get("gflops", float("nan")):.1f} GFLOP/s with '
          f'{machine.get("threads")} threads', flush=True)
    results, failed = [], set()
    for size in args.sizes:
        for name in args.configs:
            budget = mem_available()
            if args.mem_gb:
                budget = min(budget, int(args.mem_gb * GIB))
            estimate = estimate_memory(name, size, args.chunk_size)
            if name in failed:
                result = dict(name=name, size=size, status='skipped',
                              note='skipped (failed at a smaller size)')
            elif args.guard and estimate > budget:
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
    probe, _, _ = launch(__file__, 'probe', dict(threads=args.threads), 300)
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


def report(results, machine, args, argv, elapsed):
    sizes = sorted({r['size'] for r in results})
    names = [n for n in args.configs]
    lines = [
        '## High-resolution segmentation: whole-image ViR-S (chunkwise) vs parallel, sliding '
        'window and ViT-S', '',
        '`python tools/benchmark_highres.py' + ''.join(f' {a}' for a in argv) + '`',
        f'({datetime.datetime.now():%Y-%m-%d %H:%M}, {elapsed / 60:.1f} min; '
        f'{machine.get("cpu", "?")}, {machine.get("cores", "?")} cores, '
        f'{machine.get("threads", "?")} torch threads, torch {machine.get("torch", "?")}; '
        f'fp32 matmul {machine.get("gflops", float("nan")):.0f} GFLOP/s at the start, '
        f'{machine.get("gflops_end", float("nan")):.0f} at the end).', '',
        'UperNet (configs/upernet_vir_s_ade20k.py: 150 classes, 512-channel UPerHead), random '
        'init, batch 1, fp32, eval, no grad; one S x S image end to end with '
        '`vir_dense.apis.seg.segment_array` (as `tools/infer_seg.py --scale none`): '
        f'chunkwise chunk = {args.chunk_size} tokens (whole rows), slide = 512 crops, stride '
        '341. Cells: latency (median of the timed runs) (the backbone\'s part of it, timed by '
        'forward hooks; the rest is the shared UPerHead, pipeline and upsampling) / peak RSS '
        'of a fresh process (Python, torch and weights included, ~1 GiB) (+ its increase '
        'during the timed runs).', '',
        '| size | ' + ' | '.join(CONFIGS[n]['label'] for n in names) + ' |',
        '|---:|' + '---:|' * len(names),
    ]
    for size in sizes:
        row = [f'{size}x{size}']
        for name in names:
            r = next((x for x in results if x['name'] == name and x['size'] == size), None)
            row.append(cell(r) if r else '-')
        lines.append('| ' + ' | '.join(row) + ' |')
    lines += ['', 'Ratios (same run): latency and peak memory of each configuration divided by '
              "ViR-S chunkwise's.", '']
    others = [n for n in names if n != 'vir_chunkwise']
    if 'vir_chunkwise' in names and others:
        lines += ['| size | ' + ' | '.join(CONFIGS[n]['label'] for n in others) + ' |',
                  '|---:|' + '---:|' * len(others)]
        for size in sizes:
            base = _find(results, 'vir_chunkwise', size)
            row = [f'{size}x{size}']
            for name in others:
                r = _find(results, name, size)
                text = '-'
                if r and base:
                    text = (f'{r["latency_s"] / base["latency_s"]:.2f}x time, '
                            f'{r["peak"] / base["peak"]:.2f}x mem')
                    if r.get('backbone_s') and base.get('backbone_s'):
                        text += f', backbone {r["backbone_s"] / base["backbone_s"]:.1f}x'
                row.append(text)
            lines.append('| ' + ' | '.join(row) + ' |')
    lines += ['', *target_checks(results, sizes), '',
              'Guards: a configuration whose estimated peak exceeds the free memory is skipped; '
              'one that ran out of memory or time is not tried at larger sizes. '
              f'Plot: `{os.path.relpath(args.plot, REPO)}`.']
    return '\n'.join(lines)


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
                     f'target "several times slower" (>= 3x end to end) '
                     f'{"met" if ratio >= 3 else "NOT met"}.')
    return lines


def plot(results, names, path):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print(f'matplotlib is not installed: no plot written to {path}')
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    styles = dict(vir_chunkwise=dict(marker='s', lw=2.5), vir_parallel=dict(marker='^'),
                  vir_slide=dict(marker='v', ls='--'), vit_whole=dict(marker='o', color='black',
                                                                     lw=2),
                  vit_slide=dict(marker='o', color='grey', ls='--'))
    for name in names:
        rows = sorted((r for r in results if r['name'] == name and r.get('status') == 'ok'),
                      key=lambda r: r['size'])
        if not rows:
            continue
        sizes = [r['size'] for r in rows]
        style = styles.get(name, {})
        axes[0].plot(sizes, [r['latency_s'] for r in rows], label=CONFIGS[name]['label'],
                     **style)
        axes[1].plot(sizes, [r['peak'] / GIB for r in rows], label=CONFIGS[name]['label'],
                     **style)
        failed = [r for r in results if r['name'] == name and r.get('status') in (
            'OOM', 'timeout')]
        for r in failed:
            axes[0].annotate(r['status'], (r['size'], rows[-1]['latency_s']), fontsize=7)
    all_sizes = sorted({r['size'] for r in results})
    for ax, title in zip(axes, ['latency (s)', 'peak RSS (GiB)']):
        ax.set_xscale('log', base=2)
        ax.set_yscale('log')
        ax.set_xticks(all_sizes)
        ax.set_xticklabels([str(s) for s in all_sizes])
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel('image size (pixels per side)')
        ax.set_title(title)
        ax.grid(True, which='both', alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle('UperNet whole-image vs sliding-window inference, CPU fp32 batch 1 '
                 '(missing points: OOM / timeout / skipped, see docs/benchmarks.md)',
                 fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog=__doc__.split('\n\n', 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', type=int, nargs='+', default=[512, 1024, 2048, 4096],
                        help='image sides in pixels (default: %(default)s)')
    parser.add_argument('--configs', nargs='+', choices=list(CONFIGS), default=list(CONFIGS),
                        help='configurations (default: all)')
    parser.add_argument('--chunk-size', type=int, default=1024,
                        help='chunkwise tokens per chunk, rounded down to whole rows of patches '
                             '(default: %(default)s; see docs/segmentation.md)')
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
    parser.add_argument('--out', default=str(REPO / 'docs' / 'benchmarks.md'),
                        help='markdown file whose highres section is (re)written')
    parser.add_argument('--plot', default=str(REPO / 'docs' / 'benchmark_highres.png'))
    parser.add_argument('--no-write', action='store_true',
                        help='print only; leave docs/ untouched')
    parser.add_argument('--json', help='also dump the raw results to this file')
    args = parser.parse_args(argv)
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
    started = time.perf_counter()
    results, machine = run_all(args)
    body = report(results, machine, args, argv, time.perf_counter() - started)
    print('\n' + body)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(machine=machine, results=results), indent=1))
    if not args.no_write:
        write_section(args.out, body, 'highres')
        plotted = plot(results, args.configs, args.plot)
        print(f'\nwrote {args.out}' + (f' and {args.plot}' if plotted else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
