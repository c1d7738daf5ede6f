"""Every shim RecBole 1.2.1 needs on today's stack, in one place.

RecBole 1.2.1 (the latest release) predates numpy 2, pandas 3 and torch >= 2.6. ``apply()`` runs
once, before any RecBole module is imported (``recbole_llm4sbr/__init__`` calls it). Each shim says
what breaks without it; ``tests/test_compat.py`` has one test per shim that fails if it is removed.

Not a shim but a rule: never import ``recbole.quick_start``. It is the only RecBole module that
imports ray 2.6.3, which fails on setuptools >= 81 (``No module named 'pkg_resources'``) and then on
numpy 2 (``np.bool8``). The plugin's own ``quick_start`` replaces it.
"""
from __future__ import annotations

import contextlib
import os
import warnings

_APPLIED = False


def numpy_aliases() -> None:
    """numpy 2 removed ``np.float_``, ``np.complex_`` and ``np.unicode_``.

    Without them every ``recbole.config.Config(...)`` dies in ``compatibility_settings`` with
    "np.float_ was removed in the NumPy 2.0 release"; RecBole then derives ``np.float``/``np.bool``
    (used by its metrics and dataset loader) from these.
    """
    import numpy as np

    for alias, target in (("float_", "float64"), ("complex_", "complex128"), ("unicode_", "str_")):
        if alias not in np.__dict__:
            setattr(np, alias, getattr(np, target))


@contextlib.contextmanager
def full_checkpoint_load():
    """Around RecBole's own ``torch.load`` calls only: torch >= 2.6 loads with ``weights_only=True``.

    RecBole's checkpoints pickle its Config (protocol 4), so the best-epoch reload in
    ``Trainer.evaluate(load_best_model=True)`` (and ``Trainer.resume_checkpoint``) fails with "Weights
    only load failed ... Unsupported operand 149" and no test result is printed. ``add_safe_globals``
    cannot help, and RecBole passes no ``weights_only``; torch reads this switch at every such call.
    The plugin's trainer (``quick_start.plugin_trainer``) wraps exactly those two calls, so the rest of
    the process keeps torch's safe default. Checkpoints are the user's own files written by RecBole.
    """
    key = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=f".*{key}.*", category=UserWarning)
            yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def quiet_known_warnings() -> None:
    """Every run printed ~8 FutureWarning blocks before anything useful: pandas deprecations hit by
    RecBole's dataset code (chained ``fillna(inplace=True)``, ``Series.agg(len)``; harmless with
    pandas < 3, which ``pandas_below_3`` enforces) and torch's ``torch.cuda.amp.GradScaler`` in
    RecBole's trainer. Ignored only where RecBole's own modules trigger them, never globally."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole(\.|$)")


def pandas_below_3() -> None:
    """pandas 3 breaks RecBole 1.2.1 silently, so refuse it loudly.

    ``Series.agg(len)`` returns one scalar (benchmark files: "Length of values (1) does not match
    length of index") and ``fillna(..., inplace=True)`` becomes a no-op (empty token_seq cells:
    "'float' object has no attribute 'split'", NaN floats left unfilled). setup.py pins
    ``pandas<3``; this guard names the fix if another install replaced it.
    """
    import pandas as pd

    major = int(pd.__version__.split(".")[0])
    if major >= 3:
        raise ImportError(
            f"recbole_llm4sbr: pandas {pd.__version__} is installed, but RecBole 1.2.1 silently "
            "mis-reads data with pandas 3. Fix: pip install 'pandas>=2.2,<3'"
        )


def apply() -> None:
    """Apply every shim (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    pandas_below_3()
    numpy_aliases()
    quiet_known_warnings()
    _APPLIED = True
