"""Memory-lean pieces of segmentation inference, same arithmetic as mmseg's.

- `upsample_argmax`: bilinear resize of (C, h, w) logits + argmax in bands of output rows,
  never the full C x H x W tensor;
- `_lean_uper_forward`: UPerHead's eval forward in bands of rows: one stride-4 map alive
  (the largest lateral) instead of ~9;
- `_slide_logits`: mmseg's sliding window adding each window in place.

`vir_dense.apis.seg` composes them; the tests compare each with mmseg's own code.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

# Elements of one band of upsampled logits (classes x rows x width): 16 Mi floats = 64 MiB.
BAND_ELEMENTS = 1 << 24


def _source_index(out_size: int, in_size: int, align_corners: bool, device):
    """Source indices and weights of 1-D bilinear resizing, as torch's upsample_bilinear2d."""
    out = torch.arange(out_size, dtype=torch.float32, device=device)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = out * scale
    else:
        src = ((out + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    w1 = (src - i0.float()).clamp(0, 1)
    return i0, i1, w1


def _row_resizer(x: torch.Tensor, size, align_corners: bool):
    """rows(lo, hi): rows [lo, hi) of ``F.interpolate(x, size, mode='bilinear')``, the two
    source rows of each output row blended (torch's weights, computed once here), then
    torch's kernel along the width."""
    same_h, same_w = x.shape[2] == size[0], x.shape[3] == size[1]
    if not same_h:
        top, bottom, weight = _source_index(size[0], x.shape[2], align_corners, x.device)
        weight = weight.view(1, 1, -1, 1).to(x.dtype)

    def rows(lo: int, hi: int) -> torch.Tensor:
        if same_h:
            band = x[:, :, lo:hi]
        else:
            band = torch.lerp(x[:, :, top[lo:hi]], x[:, :, bottom[lo:hi]],
                              weight[:, :, lo:hi])
        if same_w:
            return band
        # torch's kernel: same weights, 2x faster than gathering columns
        return F.interpolate(band, size=(hi - lo, size[1]), mode='bilinear',
                             align_corners=align_corners)
    return rows


def upsample_argmax(logits: torch.Tensor, size: Tuple[int, int], align_corners: bool = False,
                    threshold: Optional[float] = None) -> torch.Tensor:
    """argmax over classes of ``logits`` (C, h, w) bilinearly resized to ``size`` (H, W).

    Same result as ``F.interpolate(logits[None], size, mode='bilinear').argmax(1)`` but
    computed in bands of output rows, so memory stays at one band (BAND_ELEMENTS) instead of
    C x H x W. One class (C == 1): sigmoid(logit) > threshold, as mmseg's binary heads.
    """
    if logits.dim() != 3:
        raise ValueError(f'logits must be (C, h, w), got {tuple(logits.shape)}')
    channels, in_h, in_w = logits.shape
    out_h, out_w = (int(v) for v in size)
    resized_rows = _row_resizer(logits.float()[None], (out_h, out_w), align_corners)
    band = max(1, BAND_ELEMENTS // max(1, channels * max(out_w, in_w)))
    out = torch.empty((out_h, out_w), dtype=torch.int64, device=logits.device)
    for y0 in range(0, out_h, band):
        y1 = min(out_h, y0 + band)
        rows = resized_rows(y0, y1)[0]
        if channels == 1:
            out[y0:y1] = (rows[0].sigmoid() > (0.3 if threshold is None else threshold)).long()
        else:
            out[y0:y1] = rows.argmax(dim=0)
    return out


# --------------------------------------------------------------------------------------------
# Memory-lean versions of mmseg's whole-image UPerHead forward and sliding-window inference
# --------------------------------------------------------------------------------------------
def _same_conv_module(block, kernel=None) -> bool:
    """An mmcv ConvModule (conv, norm, act) whose conv keeps the size: stride 1, padding
    (k - 1) / 2, zeros padding, no groups: its output rows can be computed band by band."""
    conv = getattr(block, 'conv', None)
    if (tuple(getattr(block, 'order', ())) != ('conv', 'norm', 'act')
            or getattr(block, 'with_explicit_padding', False)
            or not isinstance(conv, torch.nn.Conv2d) or conv.groups != 1
            or conv.padding_mode != 'zeros' or tuple(conv.stride) != (1, 1)
            or tuple(conv.dilation) != (1, 1) or isinstance(conv.padding, str)):
        return False
    size = tuple(conv.kernel_size)
    return (kernel is None or size == (kernel, kernel)) and \
        tuple(conv.padding) == tuple((k - 1) // 2 for k in size) and size[0] % 2 == 1


def _lean_uper_possible(head) -> bool:
    if type(head).__name__ != 'UPerHead' or head.training:
        return False
    return (_same_conv_module(head.fpn_bottleneck)
            and all(_same_conv_module(m, 1) for m in head.lateral_convs)
            and all(_same_conv_module(m) for m in head.fpn_convs)
            and len(head.in_index) == len(head.lateral_convs) + 1)


def _band_rows(channels: int, width: int) -> int:
    """Rows per band: about BAND_ELEMENTS elements of a `channels`-channel map."""
    return max(1, BAND_ELEMENTS // max(1, channels * width))


def _padded_rows(rows_of, lo: int, hi: int, pad: int, height: int) -> torch.Tensor:
    """Rows lo - pad .. hi + pad of a map of `height` rows (``rows_of(a, b)`` gives rows
    [a, b)), zero outside the map: a 'same' conv's input for output rows [lo, hi)."""
    src_lo, src_hi = max(lo - pad, 0), min(hi + pad, height)
    rows = rows_of(src_lo, src_hi)
    top, bottom = pad - (lo - src_lo), pad - (src_hi - hi)
    return F.pad(rows, (0, 0, top, bottom)) if top or bottom else rows


def _module_rows(block, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Rows [lo, hi) of ``block(x)`` (a `_same_conv_module`), from x's rows lo - p .. hi + p
    and the zero rows that the conv's own padding adds at the image's top and bottom."""
    conv = block.conv
    piece = _padded_rows(lambda a, b: x[:, :, a:b], lo, hi, conv.padding[0], x.shape[2])
    out = F.conv2d(piece, conv.weight, conv.bias, 1, (0, conv.padding[1]))
    if block.with_norm:
        out = block.norm(out)
    if block.with_activation:
        out = block.activate(out)
    return out


def _lean_uper_forward(head, feats: list) -> torch.Tensor:
    """``UPerHead.forward`` (eval mode) with the same arithmetic, at a fraction of its memory.

    mmseg keeps all four pyramid outputs upsampled to stride 4 and their concatenation
    (8 x channels x H/4 x W/4 floats, ~17 GB at 4096x4096 with 512 channels). Here every
    stride-4 step runs in bands of output rows (with the rows a 3x3 conv reads around them):
    the lateral conv of the largest input; the top-down additions; and, per band, the
    fpn_bottleneck conv over the concatenation as the sum of its per-level slices
    (conv(cat(a, b, ..)) = conv_a(a) + conv_b(b) + ..) on the levels' resized rows, its
    norm and activation, and cls_seg (a 1x1 conv). At the peak: the largest lateral map, the
    logits and one band. Backbone maps are released as soon as they are used; ``feats`` (a
    list of them) is emptied.
    """
    inputs = [feats[i] for i in head.in_index]
    feats.clear()
    align = head.align_corners
    top = head.psp_forward(inputs)
    inputs[-1] = None
    laterals = [None] * len(head.lateral_convs) + [top]
    for i in reversed(range(len(head.lateral_convs))):  # small maps first
        source, block = inputs[i], head.lateral_convs[i]
        laterals[i] = torch.empty((source.shape[0], block.conv.out_channels) +
                                  tuple(source.shape[2:]), dtype=source.dtype,
                                  device=source.device)
        step = _band_rows(max(source.shape[1], block.conv.out_channels), source.shape[3])
        for lo in range(0, source.shape[2], step):
            hi = min(lo + step, source.shape[2])
            laterals[i][:, :, lo:hi] = _module_rows(block, source, lo, hi)
        inputs[i] = source = None
    inputs.clear()
    for i in range(len(laterals) - 1, 0, -1):  # top-down pathway, in place
        target = laterals[i - 1]
        upper = _row_resizer(laterals[i], target.shape[2:], align)
        step = _band_rows(target.shape[1], target.shape[3])
        for lo in range(0, target.shape[2], step):
            hi = min(lo + step, target.shape[2])
            target[:, :, lo:hi].add_(upper(lo, hi))
    # fpn_convs on the smaller levels (their maps are small), level 0 band by band below
    levels = [laterals[0]] + [head.fpn_convs[i](laterals[i]) if i < len(head.fpn_convs)
                              else laterals[i] for i in range(1, len(laterals))]
    del laterals
    block = head.fpn_bottleneck
    conv, channels = block.conv, levels[0].shape[1]
    size, height, pad = levels[0].shape[2:], levels[0].shape[2], block.conv.padding[0]
    # each level's rows at stride 4: level 0 through fpn_convs[0], the others resized
    level_rows = [lambda a, b: _module_rows(head.fpn_convs[0], levels[0], a, b)]
    level_rows += [_row_resizer(level, size, align) for level in levels[1:]]
    logits, step = None, _band_rows(channels, size[1])
    for lo in range(0, height, step):
        hi = min(lo + step, height)
        band = None
        for i, rows_of in enumerate(level_rows):
            part = F.conv2d(_padded_rows(rows_of, lo, hi, pad, height),
                            conv.weight[:, i * channels:(i + 1) * channels], None, 1,
                            (0, conv.padding[1]))
            band = part if band is None else band.add_(part)
            del part
        if conv.bias is not None:
            band.add_(conv.bias.view(1, -1, 1, 1))
        if block.with_norm:
            band = block.norm(band)
        if block.with_activation:
            band = block.activate(band)
        band = head.cls_seg(band)
        if logits is None:
            logits = band.new_empty(band.shape[:2] + tuple(size))
        logits[:, :, lo:hi] = band
    return logits


def _whole_logits(model, inputs: torch.Tensor, lean: bool = True) -> torch.Tensor:
    """The decode head's logits (1, C, h, w) for the whole (unresized) input."""
    feats = list(model.extract_feat(inputs))
    if lean and _lean_uper_possible(model.decode_head):
        return _lean_uper_forward(model.decode_head, feats)
    return model.decode_head.forward(feats)


def _slide_logits(model, inputs: torch.Tensor, meta: dict) -> torch.Tensor:
    """mmseg's ``EncoderDecoder.slide_inference`` (same windows, same arithmetic), but each
    window's logits are added into their place instead of into a zero-padded full-size copy
    (mmseg allocates one full C x H x W tensor per window)."""
    h_stride, w_stride = model.test_cfg.stride
    h_crop, w_crop = model.test_cfg.crop_size
    batch, _, h_img, w_img = inputs.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = inputs.new_zeros((batch, model.out_channels, h_img, w_img))
    count = inputs.new_zeros((batch, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, h_img)
            x2 = min(w_idx * w_stride + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            crop = inputs[:, :, y1:y2, x1:x2]
            crop_meta = dict(meta, img_shape=crop.shape[2:])
            preds[:, :, y1:y2, x1:x2] += model.encode_decode(crop, [crop_meta])
            count[:, :, y1:y2, x1:x2] += 1
    if (count == 0).any():
        raise RuntimeError('sliding windows left pixels uncovered (check crop_size/stride)')
    return preds.div_(count)
