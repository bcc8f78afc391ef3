"""Semantic segmentation of images, folders or globs with a trained segmentor.

    python tools/infer_seg.py CONFIG CKPT INPUTS... [--out-dir DIR] [--device cpu]
        [--retention-mode parallel|chunkwise|recurrent] [--chunk-size N] [--memory-budget MIB]
        [--mode whole|slide] [--scale config|none|W,H] [--opacity 0.5]

Per image, in --out-dir: <stem>_color.png (class colours of the dataset palette),
<stem>_overlay.png (colours blended on the image) and <stem>_label.png (class ids, uint8, or
uint16 beyond 256 classes). Class names and palette come from the checkpoint's
meta.dataset_meta, else from the config's dataset.

High resolution without sliding windows: --retention-mode chunkwise --chunk-size 256 runs the
ViR backbone in its chunkwise form (memory linear in the number of pixels) on the whole image,
and --scale none keeps the image's own resolution instead of the config's test-time resize.
--memory-budget 128 holds each retention call to 128 MiB (same outputs, more ops).
--mode slide keeps mmseg's sliding window (512 crops, stride 341) for comparison.

Unreadable files are reported and skipped; the exit status is 1 if any image failed.
"""
import argparse
import sys

from vir_dense.cli import UsageError, run_cli


def parse_scale(text):
    if text in ('config', 'none'):
        return text
    try:
        width, height = (int(v) for v in text.replace('x', ',').split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'--scale takes config, none or W,H (e.g. 2048,512), got {text!r}') from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f'--scale sizes must be positive, got {text!r}')
    return (width, height)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog=__doc__.split('\n\n', 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='segmentation config (default_scope mmseg)')
    parser.add_argument('checkpoint', help='checkpoint trained with that config')
    parser.add_argument('inputs', nargs='+', help='image files, folders or glob patterns')
    parser.add_argument('--out-dir', default='outputs/seg', help='output folder '
                        '(default: %(default)s)')
    parser.add_argument('--device', default='cpu', help='cpu, cuda, cuda:1, ... '
                        '(default: %(default)s)')
    parser.add_argument('--retention-mode', choices=['parallel', 'chunkwise', 'recurrent'],
                        help='form of retention in the ViR backbone (same outputs); chunkwise '
                             'and recurrent imply --mode whole (default: the config\'s)')
    parser.add_argument('--chunk-size', type=int, help='cells per tile in chunkwise mode '
                        '(default 256: 16 x 16 tiles)')
    parser.add_argument('--memory-budget', type=float, metavar='MIB',
                        help='MiB one retention call of the ViR backbone may hold (chunkwise: '
                             'the operator then runs in slices, same outputs; default: no limit)')
    parser.add_argument('--mode', choices=['whole', 'slide'],
                        help='whole-image or sliding-window inference (default: the config\'s, '
                             'whole with chunkwise/recurrent retention)')
    parser.add_argument('--scale', type=parse_scale, default='config',
                        help="input scale: 'config' (the config's test Resize), 'none' (the "
                             "image's own size) or W,H (resize keeping the aspect ratio)")
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='opacity of the colours in the overlay (default: %(default)s)')
    parser.add_argument('--cfg-options', nargs='+', action=_dict_action(),
                        help='override config settings, e.g. model.test_cfg.stride=(256,256)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument('--allow-partial', action='store_true',
                        help='load only the checkpoint tensors that fit the model (listed as a '
                             'warning) instead of stopping at a checkpoint of another config')
    args = parser.parse_args(argv)
    if args.chunk_size is not None and args.chunk_size < 1:
        parser.error('--chunk-size must be >= 1')
    if args.memory_budget is not None and args.memory_budget <= 0:
        parser.error('--memory-budget must be > 0 MiB')
    if not 0.0 <= args.opacity <= 1.0:
        parser.error('--opacity must be in [0, 1]')
    return args


def _dict_action():
    from mmengine.config import DictAction
    return DictAction


def main(argv=None):
    args = parse_args(argv)
    from vir_dense.apis.inputs import collect_images
    from vir_dense.apis.seg import init_segmentor, segment_images
    try:
        collect_images(args.inputs)  # fail before the model is built
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    try:
        model = init_segmentor(args.config, args.checkpoint, device=args.device,
                               retention_mode=args.retention_mode, chunk_size=args.chunk_size,
                               mode=args.mode, cfg_options=args.cfg_options,
                               allow_partial=args.allow_partial,
                               memory_budget=None if args.memory_budget is None
                               else int(args.memory_budget * 2**20))
    except ValueError as err:  # a retention/test mode the model cannot take
        raise UsageError(str(err)) from None
    backbone = getattr(model, 'backbone', None)
    retention = getattr(backbone, 'retention_mode', None)
    detail = (f', retention {retention}' + (f' (chunk {backbone.chunk_size})'
                                            if retention == 'chunkwise' else '')
              if retention else '')
    print(f'{type(model).__name__} from {args.checkpoint}: {model.test_cfg.get("mode", "whole")} '
          f'inference{detail}, scale {args.scale}, {len(model.dataset_meta.get("classes", []))} '
          f'classes', file=sys.stderr)
    report = segment_images(model, args.inputs, args.out_dir, opacity=args.opacity,
                            scale=args.scale, progress=not args.no_progress)
    print(f'{len(report.outputs)} image(s) segmented -> {args.out_dir}', file=sys.stderr)
    if report.failed:
        print(f'{len(report.failed)} image(s) failed:', file=sys.stderr)
        for path, reason in report.failed:
            print(f'  {path}: {reason}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
