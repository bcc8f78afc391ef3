"""The optional `deploy` extra: onnx, onnxscript (torch's dynamo exporter needs it) and
onnxruntime. Imported only when an export or a check is asked for, so the rest of vir_dense
works without them."""
import importlib

from .errors import INSTALL_HINT, DeployExtraMissing

DEPLOY_PACKAGES = ('onnx', 'onnxscript', 'onnxruntime')


def require_deploy(packages=DEPLOY_PACKAGES):
    """Import the deploy packages (a dict name -> module) or raise DeployExtraMissing naming
    the missing ones and the install command."""
    modules, missing = {}, []
    for name in packages:
        try:
            modules[name] = importlib.import_module(name)
        except ImportError as err:
            missing.append(f'{name} ({err})')
    if missing:
        raise DeployExtraMissing(
            f'ONNX export needs the optional deploy extra; missing: {", ".join(missing)}. '
            f'Install it with: {INSTALL_HINT}')
    return modules
