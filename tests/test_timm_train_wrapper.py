"""tools/timm_train.py runs a timm-style training script with the ViR models registered."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE_TRAIN = '''
import argparse, timm, torch
parser = argparse.ArgumentParser()
parser.add_argument('--model')
parser.add_argument('--num-classes', type=int)
args = parser.parse_args()
model = timm.create_model(args.model, num_classes=args.num_classes, depth=1)
print('built', type(model).__name__, tuple(model(torch.randn(1, 3, 224, 224)).shape))
'''


def test_wrapper_registers_models_and_passes_arguments(tmp_path):
    script = tmp_path / 'train.py'
    script.write_text(FAKE_TRAIN)
    result = subprocess.run([sys.executable, str(ROOT / 'tools' / 'timm_train.py'), str(script),
                             '--model', 'vir_tiny_patch16_224', '--num-classes', '7'],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'built VisionRetention (1, 7)' in result.stdout


def test_wrapper_names_a_missing_script(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / 'tools' / 'timm_train.py'),
                             str(tmp_path / 'nope.py')], capture_output=True, text=True)
    assert result.returncode != 0 and 'timm\'s train.py' in result.stderr
