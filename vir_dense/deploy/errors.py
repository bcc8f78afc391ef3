"""The errors of the deployment library (each one message naming the problem and the fix)."""
from vir_dense.errors import ViRDenseError

INSTALL_HINT = 'pip install -e .[deploy]  (or `make setup`, which installs it)'


class DeployError(ViRDenseError):
    """Something about an export request that cannot be done."""


class DeployExtraMissing(DeployError, ImportError):
    """onnx / onnxscript / onnxruntime are not installed (the optional `deploy` extra)."""


class ExportFailed(DeployError):
    """torch's ONNX exporter could not convert the model; the message names the op and why."""
