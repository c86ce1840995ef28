"""The CryoNuSeg nuclei Space: the ``cryonuseg_hf`` package's Gradio app, started as a Space starts ``app.py``.

The app itself is :mod:`cryonuseg_hf.apps.app`; this file only builds and serves it. It needs the package importable:
the ``cryonuseg_hf/`` folder (with its ``checkpoint/`` and ``examples/``) beside this file, as
``cryonuseg-hf hub-export`` lays out the Space, or the package installed. ``requirements.txt`` lists what the
package needs for prediction; the Space's ``sdk_version`` (README.md) brings Gradio.
"""

import sys
from pathlib import Path

# `python app.py` puts this folder on sys.path; an import from elsewhere (a test, a notebook) may not
sys.path.insert(0, str(Path(__file__).resolve().parent))

try:
    from cryonuseg_hf.apps.app import build_app, serve
except ImportError as error:
    raise ImportError(
        f"{error}. This Space runs the cryonuseg_hf package's app: put the package folder cryonuseg_hf/ beside "
        "app.py (cryonuseg-hf hub-export does) and install requirements.txt"
    ) from error

demo = build_app()  # the shipped checkpoint, on the CPU

if __name__ == "__main__":
    serve(demo)
