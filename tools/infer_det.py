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
import os
import os.path as osp
import sys
from pathlib import Path

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import DictAction  # noqa: E402

from vir_dense import runner as vr  # noqa: E402


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
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    return parser.parse_args(argv)


def unique_names(files):
    """PNG name per input: the file stem, made unique when two folders hold the same name."""
    names, seen = [], {}
    for path in files:
        stem = Path(path).stem
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(stem if count == 0 else f'{stem}_{count}')
    return names


def main(argv=None):
    args = parse_args(argv)
    import torch
    from tqdm import tqdm

    from vir_dense.apis import det, inputs as input_utils
    from vir_dense.apis.seg import CheckpointMismatchError

    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise vr.UserError(f'--device {args.device}: CUDA is not available here; use cpu')
    if args.batch_size < 1:
        raise vr.UserError('--batch-size must be >= 1')
    try:
        files = input_utils.collect_images(args.inputs)
    except FileNotFoundError as err:
        raise vr.UserError(str(err)) from err
    vr.check_file(args.checkpoint, 'checkpoint')
    try:
        model = det.init_detector(args.config, args.checkpoint, device=args.device,
                                  cfg_options=args.cfg_options)
    except CheckpointMismatchError as err:
        raise vr.UserError(str(err)) from None
    pipeline = det.build_test_pipeline(model.cfg)
    category_ids = det.coco_category_ids(model)
    known_ids = det.coco_image_ids(model)
    next_id = max(known_ids.values(), default=0) + 1
    visualizer = None if args.no_vis else det.build_visualizer(model)

    vis_dir = osp.join(args.out_dir, 'vis')
    os.makedirs(vis_dir if visualizer else args.out_dir, exist_ok=True)
    records, skipped, written = [], [], 0
    names = unique_names(files)
    progress = tqdm(total=len(files), desc='infer_det', unit='img', file=sys.stderr)

    def flush(batch):
        nonlocal next_id, written
        if not batch:
            return
        results = det.inference_detector(model, [image for _, _, image in batch],
                                         batch_size=args.batch_size, pipeline=pipeline)
        for (path, name, image), result in zip(batch, results):
            base = osp.basename(path)
            image_id = known_ids.get(base)
            if image_id is None:
                image_id, next_id = next_id, next_id + 1
            records.extend(det.result_to_coco(result, image_id, category_ids, file_name=base))
            if visualizer is not None:
                visualizer.add_datasample(name, image, data_sample=result, draw_gt=False,
                                          pred_score_thr=args.score_thr,
                                          out_file=osp.join(vis_dir, f'{name}.png'))
            written += 1
            progress.update(1)
        batch.clear()

    batch = []
    for path, name in zip(files, names):
        try:
            image = input_utils.read_rgb(path)
        except ValueError as err:
            skipped.append(path)
            progress.write(f'skipped: {err}')
            progress.update(1)
            continue
        batch.append((path, name, image))
        if len(batch) >= args.batch_size:
            flush(batch)
    flush(batch)
    progress.close()

    out_json = osp.join(args.out_dir, 'results.json')
    with open(out_json, 'w') as f:
        json.dump(records, f)
    print(f'{written} image(s) -> {len(records)} predictions in {out_json}'
          + (f'; drawings (score >= {args.score_thr}) in {vis_dir}/' if visualizer else ''))
    if not written:
        raise vr.UserError('no image could be read')
    if skipped:  # the others were processed; exit status 1 flags the partial failure
        print(f'{len(skipped)} unreadable file(s) skipped: {", ".join(skipped)}',
              file=sys.stderr)
        sys.exit(1)
    return dict(written=written, skipped=skipped, results=out_json)


if __name__ == '__main__':
    vr.run_cli(main)
