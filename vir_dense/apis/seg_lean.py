"""Memory-lean pieces of segmentation inference, same arithmetic as mmseg's.

- `upsample_argmax`: bilinear resize of (C, h, w) logits + argmax in bands of output rows,
  never the full C x H x W tensor;
- `_lean_uper_forward`: UPerHead's eval forward with ~3 instead of ~9 stride-4 maps alive;
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
    logits = logits.float()
    same_h, same_w = in_h == out_h, in_w == out_w
    if not same_h:
        iy0, iy1, wy = _source_index(out_h, in_h, align_corners, logits.device)
    band = max(1, BAND_ELEMENTS // max(1, channels * max(out_w, in_w)))
    out = torch.empty((out_h, out_w), dtype=torch.int64, device=logits.device)
    for y0 in range(0, out_h, band):
        y1 = min(out_h, y0 + band)
        if same_h:
            rows = logits[:, y0:y1]
        else:
            w = wy[y0:y1].view(1, -1, 1)
            rows = torch.lerp(logits[:, iy0[y0:y1]], logits[:, iy1[y0:y1]], w)
        if not same_w:  # torch's kernel: same weights, 2x faster than gathering columns
            rows = F.interpolate(rows[None], size=(y1 - y0, out_w), mode='bilinear',
                                 align_corners=align_corners)[0]
        if channels == 1:
            out[y0:y1] = (rows[0].sigmoid() > (0.3 if threshold is None else threshold)).long()
        else:
            out[y0:y1] = rows.argmax(dim=0)
    return out


# --------------------------------------------------------------------------------------------
# Memory-lean versions of mmseg's whole-image UPerHead forward and sliding-window inference
# --------------------------------------------------------------------------------------------
def _lean_uper_possible(head) -> bool:
    if type(head).__name__ != 'UPerHead' or head.training:
        return False
    block = head.fpn_bottleneck
    conv = getattr(block, 'conv', None)
    return (tuple(getattr(block, 'order', ())) == ('conv', 'norm', 'act')
            and not getattr(block, 'with_explicit_padding', False)
            and isinstance(conv, torch.nn.Conv2d) and conv.groups == 1
            and conv.padding_mode == 'zeros'
            and len(head.in_index) == len(head.lateral_convs) + 1)


def _lean_uper_forward(head, feats: list) -> torch.Tensor:
    """``UPerHead.forward`` (eval mode) with the same arithmetic but a fraction of its memory.

    mmseg keeps all four pyramid outputs upsampled to stride 4 *and* their concatenation
    (8 x channels x H/4 x W/4 floats, ~17 GB at 4096x4096 with 512 channels). Here the
    fpn_bottleneck convolution over the concatenation is computed as the sum of its
    per-level slices (conv(cat(a, b, ..)) = conv_a(a) + conv_b(b) + ..), one level at a time,
    and the backbone maps are released as soon as they are used: ~3 maps of that size at the
    peak. ``feats`` (a list of the backbone's maps) is emptied.
    """
    inputs = [feats[i] for i in head.in_index]
    feats.clear()
    align = head.align_corners
    top = head.psp_forward(inputs)
    laterals = [None] * len(head.lateral_convs) + [top]
    for i in reversed(range(len(head.lateral_convs))):  # small maps first
        laterals[i] = head.lateral_convs[i](inputs[i])
        inputs[i] = None
    inputs.clear()
    for i in range(len(laterals) - 1, 0, -1):  # top-down pathway, in place
        laterals[i - 1].add_(F.interpolate(laterals[i], size=laterals[i - 1].shape[2:],
                                           mode='bilinear', align_corners=align))
    block = head.fpn_bottleneck
    weight, channels = block.conv.weight, laterals[0].shape[1]
    size = laterals[0].shape[2:]
    out = None
    for i in range(len(laterals)):
        level = head.fpn_convs[i](laterals[i]) if i < len(head.fpn_convs) else laterals[i]
        laterals[i] = None
        if i > 0:
            level = F.interpolate(level, size=size, mode='bilinear', align_corners=align)
        part = F.conv2d(level, weight[:, i * channels:(i + 1) * channels], None,
                        block.conv.stride, block.conv.padding, block.conv.dilation)
        del level
        out = part if out is None else out.add_(part)
        del part
    if block.conv.bias is not None:
        out.add_(block.conv.bias.view(1, -1, 1, 1))
    if block.with_norm:
        out = block.norm(out)
    if block.with_activation:
        out = block.activate(out)
    return head.cls_seg(out)


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
