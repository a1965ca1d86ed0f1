"""What importing a module costs: the top-level packages it loads, measured in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys


def packages_loaded_by(module: str) -> set[str]:
    """Top-level packages a fresh ``python -c 'import MODULE'`` has in sys.modules (the interpreter's own included)."""
    code = f"import sys; import {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in out.split()}
