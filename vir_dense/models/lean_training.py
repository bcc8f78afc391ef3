"""What a ViR block keeps for the backward pass while it trains: only what it cannot cheaply
recompute.

- `scaled_linear`: F.linear(x, W, b) * s with s folded into W and b. Autograd alone would keep
  the folded copy of W (a ViR-S block's three such copies are 4.7 MB, 0.75 of a token tensor at
  1024²); here the backward refolds it from W and s, which it keeps anyway.
- `gelu_mlp`: fc2(GELU(fc1(x))) * s keeping x and fc1's output, not GELU's output (4 token
  tensors of ViR-S per block, a quarter of what the block keeps); the backward recomputes the
  GELU, an element-wise op, instead of storing it.

Both give the gradients of the module-by-module forward (tests/test_chunkwise_training.py).
"""
from typing import Optional

import torch
import torch.nn.functional as F


def _folded(weight, bias, scale):
    return weight * scale[:, None], None if bias is None else bias * scale


def _scaled_linear_grads(needs, grad, x, weight, bias, scale):
    """Gradients of F.linear(x, W * s[:, None], b * s) for x, W, b, s (None where not needed;
    s None: no scale)."""
    grad_rows = grad.reshape(-1, grad.shape[-1])
    grad_scaled = grad_rows if scale is None else grad_rows * scale  # of the unscaled output
    grad_x = grad_w = grad_b = grad_s = None
    if needs[0]:
        grad_x = (grad_scaled @ weight).view(*grad.shape[:-1], weight.shape[1])
    if needs[1] or needs[3]:
        outer = grad_rows.t() @ x.reshape(-1, x.shape[-1])  # (out, in): sum_t g_t x_t^T
        if needs[1]:
            grad_w = outer if scale is None else outer * scale[:, None]
        if needs[3]:  # ds_j = sum_t g_tj (W x_t + b)_j
            grad_s = (weight * outer).sum(1)
            if bias is not None:
                grad_s = grad_s + bias * grad_rows.sum(0)
    if bias is not None and needs[2]:
        grad_b = grad_scaled.sum(0)
    return grad_x, grad_w, grad_b, grad_s


def _keep_autocast(ctx, x):
    """Record the forward's autocast state: the backward's matmuls then run in the dtype
    autograd's own backward of the same ops would use (torch.amp.custom_fwd, for any device)."""
    device = x.device.type
    ctx.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))


def _as_inputs(grads, inputs):
    return tuple(None if g is None else g.to(t.dtype) for g, t in zip(grads, inputs))


class _ScaledLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, scale):
        _keep_autocast(ctx, x)
        ctx.save_for_backward(x, weight, bias, scale)
        return F.linear(x, *_folded(weight, bias, scale))

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors  # once: checkpointing refuses a second unpack
        device, dtype, enabled = ctx.autocast
        with torch.autocast(device, dtype, enabled=enabled):
            grads = _scaled_linear_grads(ctx.needs_input_grad, grad, *saved)
        return _as_inputs(grads, saved)


class _GeluMlp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, scale, approximate):
        _keep_autocast(ctx, x)
        hidden = F.linear(x, fc1_weight, fc1_bias)
        ctx.save_for_backward(x, hidden, fc1_weight, fc1_bias, fc2_weight, fc2_bias, scale)
        ctx.approximate = approximate
        return F.linear(F.gelu(hidden, approximate=approximate),
                        *_folded(fc2_weight, fc2_bias, scale))

    @staticmethod
    def backward(ctx, grad):
        x, hidden, fc1_weight, fc1_bias, fc2_weight, fc2_bias, scale = ctx.saved_tensors
        needs = ctx.needs_input_grad
        device, dtype, enabled = ctx.autocast
        with torch.autocast(device, dtype, enabled=enabled):
            activated = F.gelu(hidden, approximate=ctx.approximate)
            grad_act, grad_w2, grad_b2, grad_s = _scaled_linear_grads(
                (True,) + needs[3:6], grad, activated, fc2_weight, fc2_bias, scale)
            del activated
            grad_hidden = torch.ops.aten.gelu_backward(grad_act.to(hidden.dtype), hidden,
                                                       approximate=ctx.approximate)
            del grad_act
            grad_x, grad_w1, grad_b1, _ = _scaled_linear_grads(
                needs[:3] + (False,), grad_hidden, x, fc1_weight, fc1_bias, None)
        inputs = (x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, scale)
        return _as_inputs((grad_x, grad_w1, grad_b1, grad_w2, grad_b2, grad_s), inputs) + (None,)


def scaled_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  scale: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight, bias) * scale, keeping no folded weight for the backward."""
    return _ScaledLinear.apply(x, weight, bias, scale)


def gelu_mlp(x: torch.Tensor, fc1: torch.nn.Linear, fc2: torch.nn.Linear, scale: torch.Tensor,
             approximate: str = 'none') -> torch.Tensor:
    """fc2(GELU(fc1(x))) * scale, keeping fc1's output but not GELU's for the backward."""
    return _GeluMlp.apply(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, scale, approximate)
