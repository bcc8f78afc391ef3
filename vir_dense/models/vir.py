"""ViR: Vision Retention Networks (arXiv 2310.19731) as timm models.

A plain ViT whose attention is replaced by multi-head retention (vir_dense.ops.retention):
pre-norm blocks with LayerScale, learned position embedding on the patches only, and a class
token appended *last* so that under a causal mask it is the one token that sees every patch.

In 'parallel' and 'chunkwise' modes each block sees the whole sequence (chunkwise: a fixed
number of large ops per block, memory linear in the tokens). With a causal mask, 'recurrent'
mode and a chunkwise classifier that only needs the last token stream one token (or one chunk
of rows) through *all* blocks before the next, keeping one state per block: memory then no
longer depends on the number of tokens.

Graph capture (TorchScript, torch.fx, timm's FX feature extraction) goes through two functions
only, `retention_op` and `resized_position_embedding` (see their docstrings): the model code
around them uses plain types, so it scripts and traces like timm's ViT. docs/timm.md lists what
a scripted or traced ViR does and does not do.
"""
import contextlib
import warnings
from functools import partial
from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from timm.layers import (DropPath, LayerScale, Mlp, PatchEmbed, register_notrace_function,
                         resample_abs_pos_embed)
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

try:  # timm >= 1.0.2x records a resize in the model's traits (what its data config reads)
    from timm.models._input import update_model_input_size
except ImportError:  # older timm: the patch embedding's own img_size is all there is
    def update_model_input_size(model, img_size, **model_args):
        return None

from vir_dense.ops.retention import (DEFAULT_CHUNK, PAPER_DECAY_EXPONENTS,
                                     check_memory_budget, check_mode, compute_dtype,
                                     decay_gammas, mask_spec, resolve_mode, retention,
                                     retention_stream, reused_buffers, stream_pieces)
from vir_dense.ops.retention.workspace import (PROJECTIONS, SCRATCH, STREAM, TOKENS,
                                               active_workspace, view_of)

from .archs import VARIANTS, variant_kwargs
from .convert import convert_to_vir
from .lean_training import gelu_mlp, scaled_linear

__all__ = ['VisionRetention', 'ViRTrunk', 'MultiHeadRetention', 'Block', 'run_blocks']


class RetentionContext(NamedTuple):
    """How retention runs for one forward pass (shared by every block).

    A NamedTuple of plain types (not a dataclass) so that TorchScript compiles the blocks and
    torch.fx can carry the grid as traced values.
    """
    mask: str  # a name in ops.retention.MASKS
    mode: str  # 'parallel' | 'chunkwise' | 'recurrent' | 'auto'
    grid: Tuple[int, int]  # (rows, cols) of the patch tokens
    cls_token: bool
    chunk_size: int
    normalize: bool = False  # divide by decay-mask row sums (retention(normalize=True))
    memory_budget: Optional[int] = None  # bytes one chunkwise call may hold (None: no limit)


_DECAY_CACHE: Dict[tuple, torch.Tensor] = {}


def cached_decay(num_heads: int, exponents: Tuple[float, float], device) -> torch.Tensor:
    """decay_gammas, kept per (heads, exponents, device) in float64: six ops per block and
    forward otherwise. Not a buffer: model.half() would round the decay. Computed afresh
    (in the graph) under torch.compile."""
    if torch.compiler.is_compiling():
        return decay_gammas(num_heads, device=device, exponents=exponents)
    key = (num_heads, tuple(exponents), torch.device(device))
    if key not in _DECAY_CACHE:
        # A normal tensor even when first asked for under torch.inference_mode: an inference
        # tensor could not be saved for backward when the same model trains later.
        with torch.inference_mode(False):
            _DECAY_CACHE[key] = decay_gammas(num_heads, device=device, exponents=exponents)
    return _DECAY_CACHE[key]


@torch.jit.ignore
def retention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: str, mode: str,
                 rows: int, cols: int, cls_token: bool, chunk_size: int, normalize: bool,
                 decay_first: float, decay_last: float,
                 memory_budget: Optional[int] = None) -> torch.Tensor:
    """The model's one call into vir_dense.ops.retention, with plain arguments.

    A leaf for graph capture: torch.fx (plain symbolic_trace, via torch.fx.wrap below, and
    timm's / torchvision's feature extractors, via register_notrace_function) records one
    call node, and TorchScript (torch.jit.ignore) calls back into Python. The operator plans
    its work from the token count and grid (tiles, 'auto' -> parallel or chunkwise), which a
    graph cannot hold; as a leaf it sees the real sizes on every call, so the graph runs the
    mode the model was set to, for any input size, with the same numbers as eager.
    Consequence (measured): a scripted ViR runs but torch.jit.save refuses it ("Could not
    export Python function call 'retention_op'"); use torch.export / ONNX to save a graph.
    """
    gamma = cached_decay(q.shape[1], (decay_first, decay_last), q.device)
    return retention(q, k, v, mask=mask, mode=mode, grid=(rows, cols), cls_token=cls_token,
                     chunk_size=chunk_size, gamma=gamma, normalize=normalize,
                     memory_budget=memory_budget)


def resized_position_embedding(pos_embed: torch.Tensor, rows: int, cols: int, base_rows: int,
                               base_cols: int) -> torch.Tensor:
    """pos_embed (1, base_rows*base_cols, D) resized bicubically to a rows x cols grid.

    An FX leaf (the size comparison inside timm's resampler cannot be traced); TorchScript
    compiles it."""
    return resample_abs_pos_embed(pos_embed, new_size=[rows, cols],
                                  old_size=[base_rows, base_cols], num_prefix_tokens=0,
                                  interpolation='bicubic')


for _leaf in (retention_op, resized_position_embedding):
    torch.fx.wrap(_leaf.__name__)  # plain torch.fx.symbolic_trace
    register_notrace_function(_leaf)  # timm's and torchvision's feature-extraction tracers


def _is_traced(value) -> bool:
    """True while torch.fx traces (value is a Proxy); shapes are then graph values."""
    return isinstance(value, torch.fx.Proxy)


class MultiHeadRetention(nn.Module):
    """Softmax-free retention: q, k, v from one linear layer, fixed per-head decay."""

    def __init__(self, dim, num_heads, qkv_bias=True, proj_drop=0.0,
                 decay_exponents=PAPER_DECAY_EXPONENTS):
        super().__init__()
        self.decay_exponents = tuple(float(e) for e in decay_exponents)
        decay_gammas(num_heads, exponents=self.decay_exponents)  # fail early on bad values
        if dim % num_heads:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        # q's 1/sqrt(d) is folded into the projection's weights: no scaled copy of q next to
        # qkv (one token-sized tensor less at the operator's peak and in what autograd keeps)
        scale = torch.ones(dim * 3)
        scale[:dim] = self.scale
        self.register_buffer('qkv_row_scale', scale, persistent=False)  # for the bias
        # the same as a column, kept so that the weight product needs no view op per block
        self.register_buffer('qkv_weight_scale', scale[:, None].clone(), persistent=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    @torch.jit.ignore
    def gamma(self, device):
        """Per-head decay (float64) on `device`."""
        return cached_decay(self.num_heads, self.decay_exponents, device)

    def _split_heads(self, x) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (scaled), k, v as (B, H, N, d) views of one projection."""
        if not torch.jit.is_scripting() and self._records(x):
            qkv = self._recorded_qkv(x)
        else:
            weight, bias = self._scaled_qkv()
            qkv = F.linear(x, weight, bias)
        return self._heads_of(qkv)

    def _scaled_qkv(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The qkv weight and bias with q's 1/sqrt(d) applied to its rows."""
        bias = self.qkv.bias
        if bias is not None:
            bias = bias * self.qkv_row_scale
        return self.qkv.weight * self.qkv_weight_scale, bias

    def _heads_of(self, qkv) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, 3 D) projection -> q, k, v as (B, H, N, d) views of it."""
        qkv = qkv.reshape(qkv.shape[0], qkv.shape[1], 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    @torch.jit.unused
    def _split_heads_into_workspace(self, x):
        """_split_heads, the projection written into a workspace buffer where run_blocks
        shares one (see _linear_into); also returns that buffer (or None)."""
        qkv, buffer = _linear_into(PROJECTIONS, x, *self._scaled_qkv())
        return self._heads_of(qkv) + (buffer,)

    @torch.jit.unused
    def _records(self, x) -> bool:
        return torch.is_grad_enabled() and not _is_traced(x)

    @torch.jit.unused
    def _recorded_qkv(self, x):
        """Under autograd: the projection without keeping a scaled copy of its weight."""
        return scaled_linear(x, self.qkv.weight, self.qkv.bias, self.qkv_row_scale)

    def _merge_heads(self, out, layer_scale: Optional[torch.Tensor] = None):
        """Heads merged and projected; times layer_scale when given (see Block)."""
        batch, tokens = out.shape[0], out.shape[2]
        merged = out.transpose(1, 2).reshape(batch, tokens, -1)
        if layer_scale is None:
            return self.proj_drop(self.proj(merged))
        return self.proj_drop(scaled_linear(merged, self.proj.weight, self.proj.bias,
                                            layer_scale))

    def retain(self, q, k, v, ctx: RetentionContext):
        return retention_op(q, k, v, ctx.mask, ctx.mode, ctx.grid[0], ctx.grid[1], ctx.cls_token,
                            ctx.chunk_size, ctx.normalize, self.decay_exponents[0],
                            self.decay_exponents[1], ctx.memory_budget)

    def forward(self, x, ctx: RetentionContext, layer_scale: Optional[torch.Tensor] = None):
        q, k, v = self._split_heads(x)
        return self._merge_heads(self.retain(q, k, v, ctx), layer_scale)

    def forward_stream(self, x, state, piece):
        """Causal streaming: x holds the tokens of `piece` (ops.retention.stream_pieces)."""
        q, k, v = self._split_heads(x)
        out, state = retention_stream(q, k, v, piece, state, gamma=self.gamma(x.device))
        return self._merge_heads(out), state


class Block(nn.Module):
    """Pre-norm ViR block: x + LS(MHR(LN(x))), then x + LS(MLP(LN(x)))."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, init_values=1e-5,
                 proj_drop=0.0, drop_path=0.0, norm_layer=None, act_layer=nn.GELU,
                 decay_exponents=PAPER_DECAY_EXPONENTS):
        super().__init__()
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        self.norm1 = norm_layer(dim)
        self.retention = MultiHeadRetention(dim, num_heads, qkv_bias, proj_drop, decay_exponents)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scaled = bool(init_values) and not getattr(self.ls1, 'inplace', False)

    def _mlp_branch(self, x):
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

    def forward(self, x, ctx: RetentionContext):
        if self.layer_scaled and not torch.jit.is_scripting():
            if self._folds(x):
                return self._forward_folded(x, ctx)
            if self._in_place(x):
                return self._forward_in_place(x, ctx)
        x = x + self.drop_path1(self.ls1(self.retention(self.norm1(x), ctx)))
        return self._mlp_branch(x)

    @torch.jit.unused
    def _folds(self, x) -> bool:
        """Fold while autograd records, eagerly (a torch.fx graph stays that of eval mode,
        as timm's feature extractors expect)."""
        return self.training and torch.is_grad_enabled() and not _is_traced(x)

    @torch.jit.unused
    def _forward_folded(self, x, ctx: RetentionContext):
        """forward, with each LayerScale folded into the linear layer before it (`proj`,
        `mlp.fc2`; timm's Mlp forward otherwise) and GELU recomputed in the backward
        (lean_training.py): the same values and gradients, but autograd keeps six token
        tensors per ViR-S block less (the two LayerScale inputs and GELU's output): 12, q, k
        and v included, against 18 module by module."""
        x = x + self.drop_path1(self.retention(self.norm1(x), ctx, self.ls1.gamma))
        mlp = self.mlp
        if self._recomputes_gelu():
            out = gelu_mlp(self.norm2(x), mlp.fc1, mlp.fc2, self.ls2.gamma, mlp.act.approximate)
        else:
            hidden = mlp.norm(mlp.drop1(mlp.act(mlp.fc1(self.norm2(x)))))
            out = scaled_linear(hidden, mlp.fc2.weight, mlp.fc2.bias, self.ls2.gamma)
        return x + self.drop_path2(mlp.drop2(out))

    @torch.jit.unused
    def _recomputes_gelu(self) -> bool:
        """timm's Mlp with GELU, no dropout or norm between fc1 and fc2, no hooks inside."""
        mlp = self.mlp
        return (_is_gelu(mlp.act) and isinstance(mlp.norm, nn.Identity)
                and not (isinstance(mlp.drop1, nn.Dropout) and mlp.drop1.p > 0)
                and not _has_hooks((mlp, mlp.fc1, mlp.act, mlp.drop1, mlp.norm, mlp.fc2)))

    @torch.jit.unused
    def _in_place(self, x) -> bool:
        """Inference in eval mode, eagerly (not under torch.fx or torch.compile), without
        autocast (a low-precision branch would round the residual stream when added in
        place), with plain nn.Linear projections (it calls their weights), while no hook
        waits on a module that the in-place forward does not call."""
        attn, mlp = self.retention, self.mlp
        return not (self.training or torch.is_grad_enabled() or _is_traced(x)
                    or torch.compiler.is_compiling() or torch.is_autocast_enabled(x.device.type)
                    or any(type(linear) is not nn.Linear for linear in (attn.proj, mlp.fc1,
                                                                        mlp.fc2))
                    or _has_hooks((attn, attn.proj, self.ls1, self.ls2, mlp, mlp.fc1, mlp.act,
                                   mlp.fc2)))

    @torch.jit.unused
    def _forward_in_place(self, x, ctx: RetentionContext):
        """forward without autograd: the same values, with the LayerScales, the residual
        additions and GELU written into tensors the block has just made, the normalized
        tokens freed before retention runs, and the projections written into the buffers
        run_blocks shares (`_linear_into`). On a CPU a fresh tensor costs about ten times its
        writing once it exceeds glibc's mmap threshold (32 MB: a ViR-S token tensor from
        4096² on), smaller ones leave resident holes in the heap, and each one held raises
        the peak. The block's output is its only new token tensor that outlives it."""
        attn, mlp = self.retention, self.mlp
        q, k, v, projections = attn._split_heads_into_workspace(self.norm1(x))
        out = attn.retain(q, k, v, ctx)
        del q, k, v  # the qkv projection is read: its buffer takes proj's output
        _give_back(PROJECTIONS, projections)
        merged = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)  # a view
        branch, projections = _linear_into(PROJECTIONS, merged, attn.proj.weight, attn.proj.bias)
        _hand_back(TOKENS, out)  # retention's output (lent by a workspace) is read
        del out, merged
        x = _residual_into_stream(branch.mul_(self.ls1.gamma), x)  # = x + ls1(...)
        del branch
        _give_back(PROJECTIONS, projections)
        hidden, scratch = _linear_into(SCRATCH, self.norm2(x), mlp.fc1.weight, mlp.fc1.bias)
        if _is_gelu(mlp.act):
            torch.ops.aten.gelu_(hidden, approximate=mlp.act.approximate)
        else:
            hidden = mlp.act(hidden)
        branch, projections = _linear_into(PROJECTIONS, mlp.norm(hidden), mlp.fc2.weight,
                                           mlp.fc2.bias)
        del hidden
        _give_back(SCRATCH, scratch)
        x.add_(branch.mul_(self.ls2.gamma))
        _give_back(PROJECTIONS, projections)
        return x

    def forward_stream(self, x, state, piece):
        out, state = self.retention.forward_stream(self.norm1(x), state, piece)
        return self._mlp_branch(x + self.drop_path1(self.ls1(out))), state


def _linear_into(name: str, x, weight, bias):
    """(x W^T + b, the workspace buffer it was written into or None) where run_blocks shares
    a retention workspace (ops.retention.workspace): a block's projections then reuse
    buffers instead of faulting in fresh pages for each block. qkv, proj and fc2 take the
    PROJECTIONS buffer in turn; the MLP's hidden tokens go into the scratch buffer, idle
    between retention calls, where it is large enough (it is for ViR's sizes), which keeps
    them off the block's peak."""
    workspace = active_workspace()
    rows, features = x.shape[:-1].numel(), weight.shape[0]
    # the scratch buffer is retention's; grown here, it would be held through retention
    buffer = None if workspace is None else workspace.take(
        name, rows * features, x.dtype, x.device, grow=name != SCRATCH)
    if buffer is None:
        return F.linear(x, weight, bias), None
    out = view_of(buffer, (rows, features))
    if bias is None:
        torch.mm(x.reshape(rows, -1), weight.t(), out=out)
    else:
        torch.addmm(bias, x.reshape(rows, -1), weight.t(), out=out)
    return view_of(buffer, tuple(x.shape[:-1]) + (features,)), buffer


def _give_back(name: str, buffer):
    if buffer is not None:
        active_workspace().give(name, buffer)


def _hand_back(name: str, result=None):
    """A result lent from the workspace (if any) has been read."""
    workspace = active_workspace()
    if workspace is not None:
        workspace.hand_back(name, result)


def _residual_into_stream(branch, x):
    """branch + x, the block's output: in a STREAM buffer lent to run_blocks where it shares
    a workspace, else a new tensor. run_blocks hands a block's input back when no one else
    can read it: the output then overwrites the input, element by element."""
    workspace = active_workspace()
    if workspace is None:
        return torch.add(branch, x)
    buffer = workspace.take(STREAM, x.numel(), x.dtype, x.device)
    workspace.lend(STREAM, buffer)
    return torch.add(branch, x, out=view_of(buffer, x.shape))


def _give_stream(x):
    """Tokens that no one will read again become the STREAM buffer: the first in-place block
    writes its output over them instead of into a new tensor (so the embedded tokens, which
    the caller's frame holds until the blocks return, cost no memory of their own)."""
    if x.is_contiguous() and x.storage_offset() == 0:
        active_workspace().give(STREAM, x.view(-1))


def _is_gelu(act) -> bool:
    """nn.GELU itself (a subclass may compute something else): what the lean paths replace
    by the aten GELU ops."""
    return type(act) is nn.GELU


def _has_hooks(modules) -> bool:
    return any(module._forward_hooks or module._forward_pre_hooks for module in modules)


def run_blocks(blocks, x, ctx: RetentionContext, out_indices=(), with_cp=False,
               last_token_only=False, reuse_input=False):
    """Run tokens x (B, N, D) through `blocks` (eager and torch.fx; TorchScript runs
    ViRTrunk.forward_blocks).

    Returns (final tokens, {block index: tokens after that block} for out_indices).
    last_token_only keeps only the last token of the output (classification while streaming).
    reuse_input: x is the caller's to discard (fresh embedded tokens that it will not read
    again); in inference the blocks may then write their outputs over it.
    """
    traced = _is_traced(x)
    if not traced:  # under torch.fx the operator resolves 'auto' when the graph runs
        heads = blocks[0].retention.num_heads if len(blocks) else 1
        ctx = ctx._replace(mode=resolve_mode(ctx.mode, x.shape[1], ctx.chunk_size,
                                             ctx.memory_budget, x.shape[0] * heads,
                                             compute_dtype(x.dtype).itemsize))
    taps = {}
    # Streaming (one piece through all blocks, one state per block) bounds memory when only
    # the last token is wanted, and is what recurrent mode is; dense outputs need every token
    # anyway, so chunkwise runs block by block: a fixed number of ops per block. Not in a
    # traced graph (its pieces depend on the input size) nor when a block carries forward
    # hooks (timm's features_only='hook'): streaming never calls Block.forward. The operator
    # then runs the same mode over the whole sequence, block by block: same outputs.
    streaming = (not traced and mask_spec(ctx.mask).causal and not _has_hooks(blocks)
                 and (ctx.mode == 'recurrent' or (ctx.mode == 'chunkwise' and last_token_only)))
    if not streaming:
        # Inference: the chunkwise calls hand their large buffers from block to block
        # (ops.retention.workspace); autograd keeps the default, buffers per call, and so
        # does a memory budget (buffers held between calls would count against it).
        shared = not (traced or torch.is_grad_enabled() or torch.compiler.is_compiling()
                      or ctx.memory_budget is not None)
        with reused_buffers() if shared else contextlib.nullcontext():
            if shared and reuse_input:
                _give_stream(x)
            for index, block in enumerate(blocks):
                if with_cp and not traced and x.requires_grad:
                    x = checkpoint(block, x, ctx, use_reentrant=False)
                else:
                    # tokens that only this block will read (no tap, no hook of the block
                    # that made them kept them) go back to the workspace they were lent
                    # from: the block writes its output over them once it has read them
                    if shared and index > 0 and index - 1 not in out_indices and \
                            not _has_hooks((blocks[index - 1],)):
                        _hand_back(STREAM, x)
                    x = block(x, ctx)
                if index in out_indices:
                    taps[index] = x
        return (x[:, -1:] if last_token_only else x), taps

    states = [None] * len(blocks)
    outputs, tap_pieces = [], {index: [] for index in out_indices}
    # Same heads and decay in every block: one table of normalizing divisors serves them all.
    pieces = stream_pieces(ctx.mask, x.shape[1], ctx.grid, ctx.cls_token, ctx.mode,
                           ctx.chunk_size, normalize=ctx.normalize,
                           gamma=blocks[0].retention.gamma(x.device) if ctx.normalize else None)
    for piece in pieces:
        h = x[:, piece.start:piece.stop]
        for index, block in enumerate(blocks):
            h, states[index] = block.forward_stream(h, states[index], piece)
            if index in tap_pieces:
                tap_pieces[index].append(h)
        outputs = [h] if last_token_only else outputs + [h]
    taps = {index: torch.cat(parts, dim=1) for index, parts in tap_pieces.items()}
    return torch.cat(outputs, dim=1), taps


class ViRTrunk(nn.Module):
    """Patch embedding, position embedding, class token, blocks and final norm.

    Shared by the timm classifier (VisionRetention) and the OpenMMLab backbone (mm.ViR), so
    both have the same parameter names and the same forward code.
    """
    __jit_unused_properties__ = ['mask']  # TorchScript reads mask_name

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=384, depth=12,
                 num_heads=6, mlp_ratio=4.0, qkv_bias=True, init_values=1e-5, pos_drop_rate=0.0,
                 proj_drop_rate=0.0, drop_path_rate=0.0, mask='causal_2d',
                 retention_mode='parallel', chunk_size=DEFAULT_CHUNK, normalize_retention=False,
                 decay_exponents=PAPER_DECAY_EXPONENTS, dynamic_img_size=False,
                 norm_layer=None, act_layer=None, retention_memory_budget=None):
        super().__init__()
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 0  # the class token is a suffix; pos_embed covers patches only
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False
        # Not in the paper: retention outputs become decay-weighted means (see
        # vir_dense.ops.retention.retention), so their scale no longer grows with image size.
        self.normalize_retention = normalize_retention
        self.set_retention_mode(retention_mode, chunk_size, mask)
        # Bytes one chunkwise retention call may hold at once (None: no limit): the operator
        # then runs in head groups / tile slices, with the same result and more ops.
        check_memory_budget(retention_memory_budget, 'retention_memory_budget')
        self.retention_memory_budget = retention_memory_budget

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim,
                                      output_fmt='NHWC', strict_img_size=not dynamic_img_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        drop_path = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear rule
        self.blocks = nn.ModuleList([  # blocks take (x, ctx): no Sequential forward
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, init_values, proj_drop_rate,
                  drop_path[i], norm_layer, act_layer or nn.GELU, decay_exponents)
            for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.init_trunk_weights()

    def init_trunk_weights(self):
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def set_retention_mode(self, mode, chunk_size=None, mask=None):
        """Switch between 'parallel', 'recurrent', 'chunkwise' and 'auto' (same weights, same
        outputs; 'auto' picks parallel or chunkwise per input size, see `resolve_mode`)."""
        check_mode(mode)
        if mask is not None:
            self.mask = mask
        self.retention_mode = mode
        if chunk_size is not None:
            if chunk_size < 1:
                raise ValueError(f'chunk_size must be >= 1, got {chunk_size}')
            self.chunk_size = chunk_size

    @property
    def mask(self):
        """The retention mask's name; setting it parses it once into `mask_spec`."""
        return self.mask_spec.name

    @mask.setter
    def mask(self, name):
        self.mask_spec = mask_spec(name)
        self.mask_name = self.mask_spec.name  # a plain str for scripted and traced graphs

    def position_embedding(self, grid: Tuple[int, int]) -> torch.Tensor:
        """pos_embed for a (rows, cols) patch grid, bicubically resized from the trained one.

        Resized on every call, as timm's ViT does, and not kept: a kept table would be held
        beside the tokens through every block (a token tensor's worth, 24 MiB at 2048²), and
        resizing costs well under 1% of a forward at any size (62 ms at 2048², one thread).
        """
        base_rows, base_cols = self.patch_embed.grid_size[0], self.patch_embed.grid_size[1]
        if torch.jit.is_scripting():
            return resized_position_embedding(self.pos_embed, grid[0], grid[1], base_rows,
                                              base_cols)
        else:
            return self._eager_position_embedding(grid)

    def _eager_position_embedding(self, grid):
        base_grid = tuple(self.patch_embed.grid_size)
        if self.dynamic_img_size and torch.jit.is_tracing():
            warnings.warn(
                f'torch.jit.trace records this ViR for a {grid[0]}x{grid[1]} patch grid only '
                '(the position embedding and the retention operator are planned from it); '
                'the traced model fails or is wrong at other sizes. Use torch.jit.script, '
                'torch.fx or torch.export for a graph that takes any size.',
                torch.jit.TracerWarning)
        if _is_traced(grid[0]):
            if not self.dynamic_img_size:  # the patch embedding asserts the trained grid
                return self.pos_embed
            return resized_position_embedding(self.pos_embed, grid[0], grid[1], *base_grid)
        grid = tuple(grid)
        if grid == base_grid:
            return self.pos_embed
        return resized_position_embedding(self.pos_embed, grid[0], grid[1], *base_grid)

    def embed(self, x, with_cls_token: bool = True) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Image (B, C, H, W) -> tokens (B, rows*cols [+ 1], D), class token last; and the grid."""
        x = self.patch_embed(x)
        grid = (x.shape[1], x.shape[2])  # indexed, not tuple(x.shape[1:3]): traceable
        if not with_cls_token:
            x = x.flatten(1, 2) + self.position_embedding(grid)
        elif not torch.jit.is_scripting() and self._embeds_in_place(x):
            # one token tensor made, not two (on a CPU the first one's hole would stay in the
            # allocator's heap)
            x = torch.cat([x.flatten(1, 2), self.cls_token.expand(x.shape[0], -1, -1)], dim=1)
            x[:, :-1].add_(self.position_embedding(grid))
        else:
            x = torch.cat([x.flatten(1, 2) + self.position_embedding(grid),
                           self.cls_token.expand(x.shape[0], -1, -1)], dim=1)
        return self.pos_drop(x), grid

    @torch.jit.unused
    def _embeds_in_place(self, x) -> bool:
        """Inference, eagerly: a graph (torch.fx, whose feature extractors drop in-place ops
        that nothing reads, or torch.compile) and autograd take the functional form."""
        return not (torch.is_grad_enabled() or _is_traced(x) or torch.compiler.is_compiling())

    def context(self, grid: Tuple[int, int], with_cls_token: bool = True) -> RetentionContext:
        return RetentionContext(self.mask_name, self.retention_mode, grid, with_cls_token,
                                self.chunk_size, self.normalize_retention,
                                self.retention_memory_budget)

    def forward_blocks(self, x, ctx: RetentionContext, last_token_only: bool = False,
                       reuse_input: bool = False):
        """All blocks on tokens x: run_blocks in eager mode and under torch.fx; a plain loop
        when scripted (TorchScript cannot compile the streaming schedule, see run_blocks)."""
        if torch.jit.is_scripting():
            for block in self.blocks:
                x = block(x, ctx)
            if last_token_only:
                x = x[:, -1:]
            return x
        else:
            return run_blocks(self.blocks, x, ctx, with_cp=self.grad_checkpointing,
                              last_token_only=last_token_only, reuse_input=reuse_input)[0]

    @torch.jit.unused
    def _embedded_unseen(self) -> bool:
        """embed's output reached no one but the caller (no hook on pos_drop, which returns
        it): the blocks may then write over it (run_blocks' reuse_input)."""
        return not _has_hooks((self.pos_drop,))


class VisionRetention(ViRTrunk):
    """ViR classifier (timm-style); the head reads the last (class) token.

    forward_features gives tokens (B, rows*cols + 1, D), class token last: `output_fmt`
    'NLC' says so to timm (its feature wrappers and layout helpers read it), as timm's own
    token models do. forward_intermediates and features_only (default 'getter') give NCHW maps.
    """

    def __init__(self, num_classes=1000, global_pool='token', drop_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.output_fmt = 'NLC'
        if global_pool not in ('token', 'avg', ''):
            raise ValueError(f"global_pool must be 'token' (the last token), 'avg' or ''; "
                             f'got {global_pool!r}')
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        self._set_feature_info()

    def _set_feature_info(self):
        reduction = self.patch_embed.patch_size[0]
        self.feature_info = [dict(module=f'blocks.{i}', num_chs=self.embed_dim,
                                  reduction=reduction) for i in range(len(self.blocks))]

    # --- timm conventions ---------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self):
        return {'pos_embed', 'cls_token'}

    @torch.jit.ignore
    def group_matcher(self, coarse=False):
        return dict(stem=r'^cls_token|pos_embed|patch_embed',
                    blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable=True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def set_input_size(self, img_size=None, patch_size=None):
        """Change the input resolution and/or patch size, as timm's VisionTransformer does:
        pos_embed is resampled (bicubic) to the new patch grid and stored at it, the patch
        projection is resampled to a new patch size, and timm's record of the model's input
        size follows. A model built without dynamic_img_size then takes the new size only."""
        previous_grid = tuple(self.patch_embed.grid_size)
        self.patch_embed.set_input_size(img_size=img_size, patch_size=patch_size)
        grid = tuple(self.patch_embed.grid_size)
        if grid != previous_grid:
            with torch.no_grad():
                resized = resample_abs_pos_embed(self.pos_embed, new_size=grid,
                                                 old_size=previous_grid, num_prefix_tokens=0,
                                                 interpolation='bicubic')
            self.pos_embed = nn.Parameter(resized, requires_grad=self.pos_embed.requires_grad)
        self._set_feature_info()
        update_model_input_size(self, self.patch_embed.img_size, patch_size=patch_size)

    @torch.jit.ignore
    def get_classifier(self):
        return self.head

    def reset_classifier(self, num_classes, global_pool=None):
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    # --- forward ------------------------------------------------------------------------
    def forward_features(self, x, last_token_only: bool = False):
        x, grid = self.embed(x)
        return self.norm(self.forward_blocks(x, self.context(grid), last_token_only,
                                             reuse_input=not torch.jit.is_scripting()
                                             and self._embedded_unseen()))

    def forward_intermediates(self, x, indices=None, norm=False, stop_early=False,
                              output_fmt='NCHW', intermediates_only=False):
        """timm's feature API: the patch tokens after the blocks in `indices` (the last n
        blocks if an int, all if None) as NCHW maps at the patch stride, for any input size
        and retention mode; with the final features unless `intermediates_only`."""
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        blocks = self.blocks[:max_index + 1] if stop_early or intermediates_only else \
            self.blocks
        tokens, grid = self.embed(x)
        tokens, taps = run_blocks(blocks, tokens, self.context(grid), out_indices=take_indices,
                                  with_cp=self.grad_checkpointing,
                                  reuse_input=self._embedded_unseen())
        intermediates = []
        for index in take_indices:
            patches = taps[index][:, :-1]  # the class token is the last token
            patches = self.norm(patches) if norm else patches
            if output_fmt == 'NCHW':
                patches = patches.reshape(x.shape[0], *grid, -1).permute(0, 3, 1, 2)
            intermediates.append(patches.contiguous())
        if intermediates_only:
            return intermediates
        return self.norm(tokens), intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm=False, prune_head=True):
        """Drop the blocks after the last one `indices` needs (timm's features_only)."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_head(self, x, pre_logits: bool = False):
        if self.global_pool == 'token':
            x = x[:, -1]
        elif self.global_pool == 'avg':
            x = x[:, :-1].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        streaming_ok = self.global_pool == 'token' and self.retention_mode != 'parallel'
        return self.forward_head(self.forward_features(x, last_token_only=streaming_ok))


# --- registered variants -----------------------------------------------------------------
def _cfg(**kwargs):
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 0.9, 'interpolation': 'bicubic',
        # As timm's ViT: the default model takes its img_size only (dynamic_img_size=True or
        # features_only=True lift that; timm's model traits then say fixed_input_size False).
        'fixed_input_size': True,
        'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5),  # the authors' convention
        'first_conv': 'patch_embed.proj', 'classifier': 'head', 'license': 'apache-2.0',
        **kwargs,
    }


# No ViR ImageNet weights exist: these cfgs carry input conventions, not downloads.
default_cfgs = generate_default_cfgs({name: _cfg() for name in VARIANTS})


def _patch_channels(state_dict):
    """Input channels of a checkpoint's patch embedding (ViR/ViT or mm names), if it has one."""
    for key, value in state_dict.items():
        if key.endswith(('patch_embed.proj.weight', 'patch_embed.projection.weight')) and \
                value.dim() == 4:
            return value.shape[1]
    return None


def _checkpoint_filter_fn(state_dict, model):
    """timm `pretrained=True` with a local file: accept ViR, ViT/DeiT or mm checkpoints."""
    target = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    checkpoint_chans = _patch_channels(state_dict)
    if checkpoint_chans is not None and checkpoint_chans != model.patch_embed.proj.in_channels:
        # timm adapts the first conv (pretrained_cfg['first_conv']) after this filter, e.g.
        # RGB weights for in_chans=1: let the checkpoint's channel count through to it.
        weight = target['patch_embed.proj.weight']
        target['patch_embed.proj.weight'] = (weight[0], checkpoint_chans, *weight[2:])
    converted, report = convert_to_vir(state_dict, target,
                                       grid=tuple(model.patch_embed.grid_size))
    print(report)
    # A ViR classifier's own head fits when its shape does (e.g. a distilled student with the
    # teacher's head); heads of other models or other class counts are never used.
    head = getattr(model, 'head', None)
    is_vir = any('.retention.' in key for key in state_dict)
    if is_vir and isinstance(head, nn.Linear):
        for name in ('weight', 'bias'):
            tensor = state_dict.get(f'head.{name}')
            if tensor is not None and tensor.shape == getattr(head, name).shape:
                converted[f'head.{name}'] = tensor
    return converted


def _create_vir(variant, pretrained=False, **kwargs):
    kwargs = {**variant_kwargs(variant), **kwargs}  # e.g. depth=2 overrides the table
    # A caller's feature_cfg (e.g. feature_cfg=dict(feature_cls='fx')) refines the defaults.
    feature_cfg = {'out_indices': kwargs.pop('out_indices', 3), 'feature_cls': 'getter',
                   **(kwargs.pop('feature_cfg', None) or {})}
    if kwargs.get('features_only'):  # a dense-feature extractor takes any input size
        kwargs.setdefault('dynamic_img_size', True)
    return build_model_with_cfg(VisionRetention, variant, pretrained,
                                pretrained_filter_fn=_checkpoint_filter_fn,
                                feature_cfg=feature_cfg, **kwargs)


@register_model
def vir_tiny_patch16_224(pretrained=False, **kwargs):
    """ViR-Ti/16 (ours, for fast experiments): D=192, 12 blocks, 3 heads."""
    return _create_vir('vir_tiny_patch16_224', pretrained, **kwargs)


@register_model
def vir_small_patch16_224(pretrained=False, **kwargs):
    """ViR-S/16: D=384, 12 blocks, 6 heads (~22.06M params)."""
    return _create_vir('vir_small_patch16_224', pretrained, **kwargs)


@register_model
def vir_base_patch16_224(pretrained=False, **kwargs):
    """ViR-B/16: D=768, 12 blocks, 12 heads (~86.59M params)."""
    return _create_vir('vir_base_patch16_224', pretrained, **kwargs)


@register_model
def vir_large_patch16_224(pretrained=False, **kwargs):
    """ViR-L/16: D=1024, 24 blocks, 16 heads (~304.37M params)."""
    return _create_vir('vir_large_patch16_224', pretrained, **kwargs)


@register_model
def vir_large_patch14_224(pretrained=False, **kwargs):
    """ViR-L/14: D=1024, 24 blocks, 16 heads (~304.25M params)."""
    return _create_vir('vir_large_patch14_224', pretrained, **kwargs)
