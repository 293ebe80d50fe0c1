"""A Serve replica runs ONNX files only: building the app (what ``serve run`` and every replica import)
must not import torch or torchvision, whose import time and memory each replica would otherwise pay."""

import os
import subprocess
import sys

from raymotion import rundir
from test_rundir import sample_manifest  # tests/ is on sys.path (no __init__.py: pytest prepends it)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BUILD = """
import sys
import serve.app
app = serve.app.build_app({"run_dir": sys.argv[1]})
assert type(app).__name__ == "Application", type(app)
print(sorted(m for m in ("torch", "torchvision") if m in sys.modules))
"""


def test_building_the_serve_app_imports_no_torch(tmp_path):
    rundir.write_manifest(str(tmp_path), sample_manifest())
    out = subprocess.run([sys.executable, "-c", BUILD, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
