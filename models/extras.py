"""Optional packages: training, evaluation and test tools are extras, not runtime dependencies
(pyproject.toml [project.optional-dependencies]). A command that needs one and runs on a production
install fails with one line naming the extra instead of a bare ModuleNotFoundError."""

from __future__ import annotations

import importlib
from types import ModuleType

from models.errors import MissingExtraError

# import name -> the distribution that provides it
_DISTRIBUTIONS = {"lightgbm": "lightgbm", "peft": "peft", "sklearn": "scikit-learn", "rouge_score": "rouge-score",
                  "matplotlib": "matplotlib", "networkx": "networkx"}


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module` (e.g. "sklearn.metrics") or raise MissingExtraError naming `extra` ("train", "eval")."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != top:
            raise  # a dependency *of* the package is missing: a broken install, not an absent extra
        dist = _DISTRIBUTIONS.get(top, top)
        raise MissingExtraError(f"{purpose} needs {dist}, which is not installed: "
                                f"pip install 'argus[{extra}]'") from None
