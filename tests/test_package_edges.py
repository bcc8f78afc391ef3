"""The model and operator packages stand on their own: a timm user's import (models, ops,
checkpoint conversion) never pulls in OpenMMLab, and no module below vir_dense.mm reaches up
into it, not even by a late import inside a function."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MM_PACKAGES = ('mmdet', 'mmseg', 'mmengine', 'mmcv', 'vir_dense.mm')

# vir_dense/__init__.py registers the OpenMMLab side too, so the package is stood in for by a
# bare module with the same path: only the imported submodules themselves run.
_IMPORT_WITHOUT_PACKAGE_INIT = f'''
import sys, types
package = types.ModuleType('vir_dense')
package.__path__ = [{str(ROOT / 'vir_dense')!r}]
sys.modules['vir_dense'] = package
import vir_dense.models, vir_dense.models.convert, vir_dense.models.checkpoint_files
import vir_dense.ops.retention
import timm, torch
model = timm.create_model('vir_tiny_patch16_224', depth=1, num_classes=0)
vir_dense.models.convert.convert_to_vir(model.state_dict(), model)
print(sorted(m for m in sys.modules if m.startswith({MM_PACKAGES!r})))
'''


def test_models_and_ops_run_without_openmmlab():
    result = subprocess.run([sys.executable, '-c', _IMPORT_WITHOUT_PACKAGE_INIT],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == '[]', result.stdout


def test_no_module_of_models_or_ops_imports_openmmlab():
    offenders = []
    for path in sorted((ROOT / 'vir_dense').glob('*/**/*.py')):
        relative = path.relative_to(ROOT / 'vir_dense')
        if relative.parts[0] not in ('models', 'ops'):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [('.' * node.level) + (node.module or '')]
            else:
                continue
            for name in names:
                if name.startswith(MM_PACKAGES) or name.startswith(('..mm', '...mm')):
                    offenders.append(f'{relative}:{node.lineno} imports {name}')
    assert not offenders, offenders
