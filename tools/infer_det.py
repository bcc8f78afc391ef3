"""Run a trained detector on images, folders or glob patterns.

    python tools/infer_det.py CONFIG CHECKPOINT INPUTS... [--out-dir DIR] [--score-thr 0.3]
                              [--device cpu] [--batch-size 1]

Writes DIR/vis/<image name>.png (boxes, masks and class names with score >= --score-thr,
drawn by mmdet's DetLocalVisualizer) and one DIR/results.json in COCO results format: a list
of {image_id, category_id, bbox [x, y, w, h], score, segmentation (RLE), file_name}, holding
every prediction the model keeps (its test_cfg score threshold), so the file can be scored
with pycocotools. Images named in the config's test annotation file keep their image ids
(results on val images can be evaluated directly); others get new ids. Category ids follow
the annotation file (real COCO ids) or are 1..K. An unreadable image is reported and skipped
(the others are processed; exit status 1). Bad arguments or no readable image: status 2.
"""
import argparse
import json
import os.path as osp
import sys

from mmengine.config import DictAction

from vir_dense.cli import UsageError, run_cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     epilog=__doc__.split('\n\n', 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='detection config file')
    parser.add_argument('checkpoint', help='trained checkpoint')
    parser.add_argument('inputs', nargs='+', help='image files, folders or glob patterns')
    parser.add_argument('--out-dir', default='outputs/infer_det', help='output folder '
                        '(default: %(default)s)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='draw predictions with at least this score (default: 0.3)')
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:N] (default: cpu)')
    parser.add_argument('--batch-size', type=int, default=1, help='images per forward pass')
    parser.add_argument('--no-vis', action='store_true', help='write only results.json')
    parser.add_argument('--allow-partial', action='store_true',
                        help='load only the checkpoint tensors that fit the model (listed as a '
                             'warning) instead of stopping at a checkpoint of another config')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from vir_dense.apis import det
    from vir_dense.apis.inputs import collect_images

    if args.batch_size < 1:
        raise UsageError('--batch-size must be >= 1')
    try:
        collect_images(args.inputs)  # fail before the model is built
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    model = det.init_detector(args.config, args.checkpoint, device=args.device,
                              cfg_options=args.cfg_options, allow_partial=args.allow_partial)
    report = det.detect_images(model, args.inputs, args.out_dir, score_thr=args.score_thr,
                               batch_size=args.batch_size, draw=not args.no_vis)
    with open(report.files['results']) as f:
        predictions = len(json.load(f))
    print(f'{len(report.outputs)} image(s) -> {predictions} predictions in '
          f'{report.files["results"]}' + (f'; drawings (score >= {args.score_thr}) in '
                                         f'{osp.join(args.out_dir, "vis")}/'
                                         if not args.no_vis else ''))
    if not report.outputs:
        raise UsageError('no image could be read')
    if report.failed:  # the others were processed; exit status 1 flags the partial failure
        print(f'{len(report.failed)} unreadable file(s) skipped: '
              f'{", ".join(path for path, _ in report.failed)}', file=sys.stderr)
        sys.exit(1)
    return dict(written=len(report.outputs), skipped=[p for p, _ in report.failed],
                results=report.files['results'])


if __name__ == '__main__':
    run_cli(main)
