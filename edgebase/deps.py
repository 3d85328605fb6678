"""Optional dependencies: checked once, named by the extra that installs them.

Nothing here installs anything; a missing package is an error with a hint.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from functools import cache
from pathlib import Path

from edgebase.errors import MissingDependencyError


@cache
def is_available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require(module: str, *, extra: str, purpose: str) -> None:
    """Raise MissingDependencyError unless `module` can be imported."""
    if not is_available(module):
        raise MissingDependencyError(module, extra, purpose)


def version_of(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def import_tensorflow():
    """TensorFlow without its start-up chatter (oneDNN, CUDA probing) on stderr."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    if "tensorflow" not in sys.modules:
        # Triton (pulled in by torch's CUDA build) segfaults when its LLVM loads after TensorFlow's;
        # loaded first, both work. Measured with tensorflow 2.21 and triton 3.x.
        if "triton" not in sys.modules and is_available("triton"):
            with contextlib.suppress(Exception):
                import triton  # noqa: F401
        with output_to(Path(os.devnull)):  # the CUDA probe logs before TF_CPP_MIN_LOG_LEVEL applies
            import tensorflow  # noqa: F401
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


@contextlib.contextmanager
def output_to(log: Path):
    """Send everything written to stdout and stderr, by Python or by native code, to `log`.

    TensorFlow's converter and ONNX Runtime's tools print from C++ and with print(); on the
    terminal that is noise, and under `--json` it would corrupt the one JSON document on stdout.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log, "ab") as sink, open(log, "a", buffering=1) as text:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            # print() goes to sys.stdout, which is not fd 1 when it has been replaced (pytest, a caller)
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield log
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def import_coremltools():
    """coremltools, without TensorFlow.

    coremltools imports TensorFlow when it is installed, only to offer its TensorFlow converters, which
    edgectl does not use. That costs about 5 s, and TensorFlow's LLVM loaded before Triton's makes Triton
    crash (see `import_tensorflow`). TensorFlow is hidden while coremltools is imported; one
    that is already imported stays as it is.
    """
    if "coremltools" in sys.modules:
        return sys.modules["coremltools"]
    hide = "tensorflow" not in sys.modules
    if hide:
        sys.modules["tensorflow"] = None  # type: ignore[assignment]  # `import tensorflow` raises ImportError
    try:
        with output_to(
            Path(os.devnull)
        ):  # "not tested with torch 2.x", "Failed to load _MLModelProxy" (Linux)
            import coremltools
    finally:
        if hide:
            sys.modules.pop("tensorflow", None)
    return coremltools


def import_quietly(module: str):
    """Import `module`, through the quiet, ordered imports above for TensorFlow and coremltools."""
    import importlib

    if module.split(".")[0] == "tensorflow":
        import_tensorflow()
    elif module.split(".")[0] == "coremltools":
        import_coremltools()
    return importlib.import_module(module)
