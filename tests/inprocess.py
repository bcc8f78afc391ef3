"""Helpers for the end-to-end tests that run the tools in the test process."""
import importlib.util
from pathlib import Path
from types import SimpleNamespace

from vir_dense.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]


def load_tool(name):
    """tools/<name>.py as a module (its main(argv) is what `python tools/<name>.py` runs);
    `name` may hold a role folder, e.g. 'deployment/export_onnx'."""
    spec = importlib.util.spec_from_file_location(f'_vir_tool_{name.replace("/", "_")}',
                                                  ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(name, args, capsys):
    """`python tools/<name>.py ARGS` in this process: exit status, stdout and stderr."""
    code = 0
    try:
        run_cli(load_tool(name).main, args)
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


def forget_visualizers():
    """The configs name their visualizer 'visualizer'; mmengine keeps one instance per name
    per process, so a second in-process run would log into the first run's folder."""
    from mmengine.visualization import Visualizer
    classes = [Visualizer]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        cls._instance_dict.pop('visualizer', None)
