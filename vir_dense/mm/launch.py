"""Starting an mmengine run on the machine at hand: CUDA, or CPU with gloo."""
import torch
import torch.distributed as dist


def setup_device(cfg, launcher):
    """Without CUDA: gloo for distributed runs, and a DDP wrapper without device ids."""
    if torch.cuda.is_available():
        return
    env_cfg = cfg.setdefault('env_cfg', {})
    env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
    if launcher != 'none':
        wrapper = cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel')
        wrapper['device_ids'] = None  # CPU modules: DDP refuses device ids
        wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
        cfg.model_wrapper_cfg = wrapper


def init_distributed_cpu(cfg, launcher):
    """mmengine's pytorch launcher calls torch.cuda.set_device; on CPU start gloo ourselves."""
    if launcher != 'pytorch' or torch.cuda.is_available() or dist.is_initialized():
        return
    kwargs = dict((cfg.get('env_cfg') or {}).get('dist_cfg') or {})
    kwargs['backend'] = 'gloo'
    dist.init_process_group(**kwargs)


def build_runner(cfg):
    """The config's runner (``runner_type``), else mmengine's Runner."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
