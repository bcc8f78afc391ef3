"""Teacher (timm ViT/DeiT from a local file), student (ViR of the same shape), token order,
the two matching objectives, and teacher-student agreement metrics."""
import math
import os
from typing import Dict, Iterable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vir_dense.models.archs import VARIANTS, variant_kwargs
from vir_dense.models.checkpoint_files import load_checkpoint_file
from vir_dense.models.convert import convert_to_vir
from vir_dense.models.vir import VisionRetention, run_blocks

__all__ = ['DistillError', 'load_teacher', 'build_student', 'to_student_order',
           'to_teacher_order', 'relative_mse', 'BlockMatching', 'FeatureMatching',
           'feature_agreement', 'trainable_stage_parameters']


class DistillError(ValueError):
    """A teacher, student or data set that cannot be distilled; the message says why."""


# --------------------------------------------------------------------------- token order
def to_student_order(x: torch.Tensor) -> torch.Tensor:
    """ViT order (class, patches...) -> ViR order (patches..., class)."""
    return torch.cat([x[:, 1:], x[:, :1]], dim=1)


def to_teacher_order(x: torch.Tensor) -> torch.Tensor:
    """ViR order (patches..., class) -> ViT order (class, patches...)."""
    return torch.cat([x[:, -1:], x[:, :-1]], dim=1)


def relative_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the target's variance (1 - R^2; 0 is a perfect match, 1 is
    as good as predicting the target's mean). Computed in float32 whatever the autocast."""
    pred, target = pred.float(), target.float()
    return (pred - target).pow(2).mean() / target.var(unbiased=False).clamp_min(1e-12)


# --------------------------------------------------------------------------- teacher
def _strip_wrappers(state_dict):
    for prefix in ('module.', '_orig_mod.'):
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def load_teacher(model_name: str, checkpoint: str, img_size: Optional[int] = None,
                 **model_kwargs):
    """A frozen timm ViT/DeiT ``model_name`` with the weights of the local file ``checkpoint``.

    Depth, patch size, input channels and the number of classes are read from the file (so a
    shallower or re-headed model of that family loads); the width must be the model's own.
    ``img_size`` (default: the file's own grid times the patch) sets the input resolution;
    the position embedding is resampled to it. Returns (teacher in eval mode, info dict).
    Raises :class:`DistillError` with the reason when the file or the model does not fit.
    """
    import timm
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    if not checkpoint or not os.path.isfile(checkpoint):
        raise DistillError(f'teacher checkpoint not found: {checkpoint!r} (give a local '
                           '.pth/.safetensors file of a timm ViT/DeiT; nothing is downloaded)')
    if model_name not in timm.list_models():
        import difflib
        close = difflib.get_close_matches(model_name, timm.list_models('*vit*') +
                                          timm.list_models('*deit*'), n=3)
        raise DistillError(f'unknown timm model {model_name!r}'
                           + (f'; did you mean {", ".join(close)}?' if close else ''))
    try:
        state_dict = _strip_wrappers(load_checkpoint_file(checkpoint))
    except (RuntimeError, ValueError, OSError) as err:
        raise DistillError(f'cannot read teacher checkpoint {checkpoint!r}: {err}') from err
    patch_w = state_dict.get('patch_embed.proj.weight')
    if patch_w is None or patch_w.dim() != 4:
        raise DistillError(f'{checkpoint!r} is not a ViT/DeiT checkpoint: it has no 4-d '
                           'patch_embed.proj.weight')
    width, in_chans, patch = patch_w.shape[0], patch_w.shape[1], patch_w.shape[2]
    depth = 1 + max((int(k.split('.')[1]) for k in state_dict if k.startswith('blocks.')),
                    default=-1)
    kwargs = dict(patch_size=patch, in_chans=in_chans, depth=depth)
    head = state_dict.get('head.weight')
    kwargs['num_classes'] = head.shape[0] if head is not None else 0
    native = None
    if 'pos_embed' in state_dict:
        n = state_dict['pos_embed'].shape[1]
        for prefix in (1, 0):
            side = math.isqrt(max(n - prefix, 0))
            if side * side == n - prefix:
                native = side * patch
                break
    kwargs.update(model_kwargs)
    img_size = img_size or native or 224
    try:
        teacher = timm.create_model(model_name, pretrained=False, img_size=img_size, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise DistillError(f'cannot build teacher {model_name!r} with {kwargs}: {err}') from err
    if not isinstance(teacher, VisionTransformer):
        raise DistillError(f'{model_name!r} is a {type(teacher).__name__}; the teacher must be '
                           'a timm VisionTransformer (ViT, DeiT, DeiT III, ...)')
    if teacher.embed_dim != width:
        raise DistillError(
            f'teacher checkpoint {checkpoint!r} has width (embed dim) {width}, but '
            f'{model_name!r} has width {teacher.embed_dim}: pick the timm model of that width '
            '(192: vit_tiny/deit_tiny, 384: vit_small/deit_small, 768: vit_base/deit_base)')
    if teacher.num_prefix_tokens != 1 or teacher.cls_token is None:
        raise DistillError(f'{model_name!r} has {teacher.num_prefix_tokens} prefix tokens; only '
                           'ViTs with exactly one class token (no distillation or register '
                           'tokens) map onto ViR, whose only extra token is its class token')
    try:
        state_dict = checkpoint_filter_fn(state_dict, teacher)
        result = teacher.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise DistillError(f'teacher checkpoint {checkpoint!r} does not fit {model_name!r}: '
                           f'{str(err).splitlines()[0][:400]}') from err
    if result.missing_keys or result.unexpected_keys:
        raise DistillError(f'teacher checkpoint {checkpoint!r} does not fit {model_name!r}: '
                           f'missing {result.missing_keys[:6]}, unexpected '
                           f'{result.unexpected_keys[:6]}')
    teacher.eval().requires_grad_(False)
    info = dict(model=model_name, checkpoint=os.path.abspath(checkpoint), img_size=img_size,
                native_img_size=native, width=width, depth=depth, patch_size=patch,
                num_heads=teacher.blocks[0].attn.num_heads,
                num_classes=kwargs['num_classes'], **{k: v for k, v in model_kwargs.items()
                                                      if isinstance(v, (int, float, str))})
    return teacher, info


# --------------------------------------------------------------------------- student
def _head_transfers(teacher) -> bool:
    """ViR's head reads its (last) class token after the final norm, as a 'token'-pooled ViT
    without fc_norm does: then the ViT head is the ViR head."""
    return (getattr(teacher, 'global_pool', None) == 'token' and teacher.num_classes > 0
            and isinstance(getattr(teacher, 'fc_norm', nn.Identity()), nn.Identity)
            and isinstance(teacher.head, nn.Linear))


def build_student(teacher, mask: str = 'bidirectional_2d', normalize_retention: bool = False,
                  decay_exponents: Sequence[float] = (5.0, 9.0), retention_mode: str = 'parallel',
                  student_arch: Optional[str] = None, source: str = 'teacher'):
    """The ViR of the teacher's width, depth, heads, patch and resolution, initialised with
    every transferable tensor of the teacher (the naive conversion). Returns (student,
    CheckpointReport). ``student_arch`` (e.g. 'vir_small_patch16_224') checks that the result
    will load into that registered ViR."""
    width, depth = teacher.embed_dim, len(teacher.blocks)
    patch = teacher.patch_embed.patch_size[0]
    if student_arch is not None:
        if student_arch not in VARIANTS:
            raise DistillError(f'unknown ViR {student_arch!r}; choose one of {sorted(VARIANTS)}')
        size = variant_kwargs(student_arch)
        s_patch, s_width, s_depth = size['patch_size'], size['embed_dim'], size['depth']
        if (s_width, s_depth, s_patch) != (width, depth, patch):
            raise DistillError(
                f'teacher (width {width}, depth {depth}, patch {patch}) does not match '
                f'{student_arch} (width {s_width}, depth {s_depth}, patch {s_patch}): the ViR '
                'must have the teacher\'s width and depth')
    attn = teacher.blocks[0].attn
    fc1 = teacher.blocks[0].mlp.fc1
    with_head = _head_transfers(teacher)
    student = VisionRetention(
        img_size=tuple(teacher.patch_embed.img_size), patch_size=patch,
        in_chans=teacher.patch_embed.proj.in_channels, embed_dim=width, depth=depth,
        num_heads=attn.num_heads, mlp_ratio=fc1.out_features / width,
        qkv_bias=attn.qkv.bias is not None, mask=mask, retention_mode=retention_mode,
        normalize_retention=normalize_retention, decay_exponents=tuple(decay_exponents),
        num_classes=teacher.num_classes if with_head else 0, global_pool='token')
    converted, report = convert_to_vir(teacher.state_dict(), student, source=source)
    unexpected = [k for k in report.unexpected if not k.startswith('head')]
    if unexpected or report.missing:
        raise DistillError(f'the teacher has tensors ViR cannot hold or lacks some ViR needs '
                           f'(unexpected {unexpected[:6]}, missing {report.missing[:6]}); '
                           f'only plain pre-norm ViT blocks convert\n{report}')
    if with_head:
        converted['head.weight'] = teacher.head.weight.detach().clone()
        converted['head.bias'] = teacher.head.bias.detach().clone()
        report.notes.append('classifier head copied (class token last in ViR, first in ViT)')
    result = student.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    return student, report


def trainable_stage_parameters(student, stage: int):
    """Stage 1 trains each block's retention branch (norm1, retention, ls1); stage 2 all
    but the classifier head (the teacher's, copied: no objective touches it)."""
    student.requires_grad_(stage == 2)
    if getattr(student, 'head', None) is not None:
        student.head.requires_grad_(False)
    if stage == 1:
        for block in student.blocks:
            for module in (block.norm1, block.retention, block.ls1):
                module.requires_grad_(True)
    return [p for p in student.parameters() if p.requires_grad]


# --------------------------------------------------------------------------- objectives
class _TeacherTaps:
    """Forward hooks collecting block inputs, attention-branch outputs and block outputs."""

    def __init__(self, teacher):
        self.inputs, self.branches, self.outputs = {}, {}, {}
        self.handles = []
        for i, block in enumerate(teacher.blocks):
            self.handles.append(block.register_forward_pre_hook(self._save(self.inputs, i, True)))
            self.handles.append(block.ls1.register_forward_hook(self._save(self.branches, i)))
            self.handles.append(block.register_forward_hook(self._save(self.outputs, i)))

    @staticmethod
    def _save(store, index, pre=False):
        if pre:
            return lambda module, args: store.__setitem__(index, args[0])
        return lambda module, args, out: store.__setitem__(index, out)

    def clear(self):
        self.inputs.clear(), self.branches.clear(), self.outputs.clear()

    def remove(self):
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.clear()


class BlockMatching(nn.Module):
    """Stage 1: per block i, ls1(retention(norm1(x_i))) of the student vs the teacher's
    ls1(attn(norm1(x_i))), with x_i the *teacher's* input to block i (token order mapped).
    forward(images) returns the per-block relative MSE (a vector of length depth), plus
    ``cls_weight`` times that of the class token alone.

    The two halves are also separate, so that a run can compute the teacher's side once and
    reuse it (the teacher is frozen): :meth:`teacher_targets` (images -> per-block inputs and
    targets) and :meth:`match` (inputs, targets -> losses)."""

    def __init__(self, teacher, student, cls_weight: float = 0.0):
        super().__init__()
        self.teacher, self.student = teacher, student
        self.cls_weight = cls_weight
        self.taps = _TeacherTaps(teacher)

    def forward(self, images=None, inputs=None, targets=None):
        """Losses on ``images``, or on precomputed teacher ``inputs`` and ``targets``."""
        if images is not None:
            inputs, targets = self.teacher_targets(images)
        return self.match(inputs, targets)

    @torch.no_grad()
    def teacher_targets(self, images):
        """The teacher's input to every block and its attention-branch output, in the
        student's token order: two (depth, B, N + 1, D) tensors."""
        self.teacher.eval()
        self.taps.clear()
        self.teacher.forward_features(images)
        depth = len(self.teacher.blocks)
        inputs = torch.stack([to_student_order(self.taps.inputs[i]) for i in range(depth)])
        targets = torch.stack([to_student_order(self.taps.branches[i]) for i in range(depth)])
        self.taps.clear()
        return inputs, targets

    def _context(self, tokens: int):
        side = math.isqrt(tokens - 1)  # the teacher's grid is square (its pos_embed is)
        grid = tuple(self.teacher.patch_embed.grid_size)
        if grid[0] * grid[1] != tokens - 1:
            grid = (side, side)
        return self.student.context(grid)

    def match(self, inputs, targets):
        """Per-block relative MSE of the student's retention branches on ``inputs``."""
        ctx = self._context(inputs.shape[2])
        losses = []
        for i, block in enumerate(self.student.blocks):
            out = block.ls1(block.retention(block.norm1(inputs[i]), ctx))
            loss = relative_mse(out, targets[i])
            if self.cls_weight:  # the class token is 1 of N + 1 tokens but carries the label
                loss = loss + self.cls_weight * relative_mse(out[:, -1], targets[i][:, -1])
            losses.append(loss)
        return torch.stack(losses)

    @torch.no_grad()
    def calibrate(self, batches, mode: str = 'proj', ridge: float = 1e-3):
        """Closed-form start for stage 1, fitted on ``batches``: an iterable of image batches
        or of (inputs, targets) pairs from :meth:`teacher_targets` (sums are accumulated batch
        by batch, so the fit may use more images than fit in memory at once).

        The copied weights without softmax give outputs orders of magnitude off (a sum over all
        tokens instead of a weighted mean). ``mode='scale'`` fits each block's LayerScale (a
        per-channel scale) by least squares against the teacher's attention branch;
        ``mode='proj'`` (default) fits the whole output projection (weight and bias; ridge
        ``ridge`` times the mean feature energy; LayerScale set to 1): the best linear read-out
        of the retention heads as they are, which is much of what stage 1 would otherwise learn
        by gradient steps (demo: held-out block errors 0.07-0.52 after a fit on 256 images vs
        0.27-1.0 with 'scale'). Under DDP the sums are reduced over all processes. Returns the
        per-block relative MSE after the fit, on the first batch.
        """
        import torch.distributed as dist
        if mode not in ('scale', 'proj'):
            raise DistillError(f"calibration mode must be 'scale' or 'proj', got {mode!r}")
        blocks = list(self.student.blocks)
        sums = [None] * len(blocks)
        first = None
        for batch in batches:
            inputs, targets = (batch if isinstance(batch, (tuple, list))
                               else self.teacher_targets(batch))
            first = first or (inputs, targets)
            ctx = self._context(inputs.shape[2])
            for i, block in enumerate(blocks):
                target = targets[i].float().flatten(0, 1)
                if mode == 'scale':
                    out = block.retention(block.norm1(inputs[i]), ctx).float().flatten(0, 1)
                    part = torch.stack([(out * target).sum(0), out.pow(2).sum(0)])
                else:
                    z = self._projection_input(block, inputs[i], ctx)
                    part = torch.cat([z.T @ z, z.T @ target], dim=1)
                sums[i] = part if sums[i] is None else sums[i] + part
        if first is None:
            raise DistillError('calibration got no images')
        reduce = dist.is_available() and dist.is_initialized()
        for block, total in zip(blocks, sums):
            if reduce:
                dist.all_reduce(total)
            if mode == 'scale':
                if not isinstance(block.ls1, nn.Identity):
                    block.ls1.gamma.copy_(total[0] / total[1].clamp_min(1e-12))
                continue
            features = total.shape[0]
            gram, cross = total[:, :features], total[:, features:]
            energy = gram.diagonal()[:-1].mean().clamp_min(1e-12)
            eye = torch.eye(features, dtype=gram.dtype, device=gram.device)
            eye[-1, -1] = 0  # the bias is not shrunk
            solution = torch.linalg.solve(gram + ridge * energy * eye, cross)
            proj = block.retention.proj
            proj.weight.copy_(solution[:-1].T.to(proj.weight.dtype))
            proj.bias.copy_(solution[-1].to(proj.bias.dtype))
            if not isinstance(block.ls1, nn.Identity):
                block.ls1.gamma.fill_(1.0)
        return self.match(*first)

    @staticmethod
    def _projection_input(block, x, ctx):
        """The merged retention heads that enter the output projection, plus a ones column
        (the bias), as (tokens, D + 1) float32."""
        captured = {}
        handle = block.retention.proj.register_forward_pre_hook(
            lambda module, args: captured.__setitem__('z', args[0]))
        try:
            block.retention(block.norm1(x), ctx)
        finally:
            handle.remove()
        z = captured['z'].float().flatten(0, 1)
        return torch.cat([z, torch.ones_like(z[:, :1])], dim=1)

    def close(self):
        """Detach the hooks from the teacher (call when the stage is over)."""
        self.taps.remove()


class FeatureMatching(nn.Module):
    """Stage 2: the student's final (normed) tokens vs the teacher's, plus the class token on
    its own (weight ``cls_weight``), block outputs at ``taps`` (weight ``tap_weight``) and,
    optionally, the teacher head's predictions (KL, weight ``logit_weight``).
    forward(images) returns {'final': ..., 'cls': ..., 'tap<i>': ...} losses.

    As in :class:`BlockMatching`, the teacher's side is also separate, so that a run can
    compute it once and reuse it: :meth:`teacher_targets` (images -> final tokens and tap
    outputs; or :meth:`targets_from_block_inputs`, from a stage-1 pool) and
    ``forward(images, targets=...)``."""

    def __init__(self, teacher, student, taps: Sequence[int] = (), cls_weight: float = 1.0,
                 tap_weight: float = 1.0, logit_weight: float = 0.0):
        super().__init__()
        self.teacher, self.student = teacher, student
        depth = len(student.blocks)
        self.tap_indices = tuple(sorted({i % depth for i in taps}))
        self.cls_weight, self.tap_weight = cls_weight, tap_weight
        if logit_weight and teacher.num_classes <= 0:
            raise DistillError('logit matching needs a teacher with a classifier head')
        self.logit_weight = logit_weight
        self.taps = _TeacherTaps(teacher)

    @torch.no_grad()
    def teacher_targets(self, images):
        """The teacher's final (normed) tokens, (B, N + 1, D), and its block outputs at the
        taps, (len(taps), B, N + 1, D), in the student's token order."""
        self.teacher.eval()
        self.taps.clear()
        final = to_student_order(self.teacher.forward_features(images))
        taps = [to_student_order(self.taps.outputs[i]) for i in self.tap_indices]
        self.taps.clear()
        return final, (torch.stack(taps) if taps else final.new_zeros((0, *final.shape)))

    @torch.no_grad()
    def targets_from_block_inputs(self, inputs, chunk: int = 64):
        """:meth:`teacher_targets` from the teacher's block inputs (as
        :meth:`BlockMatching.teacher_targets` gives them, student order): block i's output is
        block i + 1's input, so only the last block and the final norm run (on ``chunk``
        images at a time)."""
        self.teacher.eval()
        last = torch.cat([to_student_order(self.teacher.blocks[-1](to_teacher_order(part)))
                          for part in inputs[-1].split(chunk)])
        self.taps.clear()  # the hooks saw the last block's forward
        outputs = torch.cat([inputs[1:], last[None]])
        final = to_student_order(self.teacher.norm(to_teacher_order(last)))
        return final, outputs[list(self.tap_indices)]

    def forward(self, images, targets=None):
        """Losses on ``images``; ``targets``: their :meth:`teacher_targets`, if precomputed."""
        target, tap_targets = self.teacher_targets(images) if targets is None else targets
        x, grid = self.student.embed(images)
        x, taps = run_blocks(self.student.blocks, x, self.student.context(grid),
                             out_indices=self.tap_indices,
                             with_cp=self.student.grad_checkpointing)
        x = self.student.norm(x)
        losses = {'final': relative_mse(x, target)}
        if self.cls_weight:
            losses['cls'] = self.cls_weight * relative_mse(x[:, -1], target[:, -1])
        for k, i in enumerate(self.tap_indices):
            losses[f'tap{i}'] = self.tap_weight * relative_mse(taps[i], tap_targets[k])
        if self.logit_weight:  # KL between the teacher head's outputs on both token sets
            t_logp = F.log_softmax(self.teacher.forward_head(to_teacher_order(target)).float(), -1)
            s_logp = F.log_softmax(self.teacher.forward_head(to_teacher_order(x)).float(), -1)
            losses['logits'] = self.logit_weight * F.kl_div(s_logp, t_logp, log_target=True,
                                                            reduction='batchmean')
        return losses

    def close(self):
        self.taps.remove()


# --------------------------------------------------------------------------- metrics
@torch.no_grad()
def feature_agreement(teacher, student, batches: Iterable, device='cpu') -> Dict[str, float]:
    """Teacher-student agreement over ``batches`` of images or (images, labels).

    Returns the mean cosine similarity of the final tokens (all, class token, patches), the
    relative MSE of the final tokens, and with labels: the accuracy of the teacher, of the
    teacher's head applied to the student's tokens, and how often the two predictions agree.
    """
    teacher.eval(), student.eval()
    sums: Dict[str, float] = {}
    count, count_tokens = 0, 0

    def add(key, value):
        sums[key] = sums.get(key, 0.0) + float(value)

    for batch in batches:
        images, labels = (batch if isinstance(batch, (tuple, list)) else (batch, None))
        images = images.to(device)
        t_tok = teacher.forward_features(images).float()
        s_tok = to_teacher_order(student.forward_features(images)).float()
        cos = F.cosine_similarity(s_tok, t_tok, dim=-1)  # (B, 1 + N)
        add('token_cosine', cos.sum())
        add('cls_cosine', cos[:, 0].sum())
        add('patch_cosine', cos[:, 1:].mean(1).sum())
        add('relative_mse', relative_mse(s_tok, t_tok) * images.shape[0])
        count_tokens += cos.numel()
        if labels is not None and teacher.num_classes > 0:
            labels = labels.to(device)
            t_pred = teacher.forward_head(t_tok).argmax(-1)
            s_pred = teacher.forward_head(s_tok).argmax(-1)
            add('teacher_accuracy', (t_pred == labels).sum())
            add('student_accuracy', (s_pred == labels).sum())
            add('prediction_agreement', (t_pred == s_pred).sum())
        count += images.shape[0]
    if not count:
        raise DistillError('feature_agreement got no images')
    out = {k: v / count for k, v in sums.items()}
    out['token_cosine'] = sums['token_cosine'] / count_tokens
    out['num_images'] = count
    return out
