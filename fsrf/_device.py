"""Device and precision choices, made when a run starts (never at import).

On a CUDA device a run keeps the GPU busy: batches go through pinned host memory with
non-blocking copies (:func:`to_device`), masks are drawn there, and nothing in the step loop
reads a value back to the host. Settings that are process-wide in torch (TF32, deterministic
algorithms, cuDNN benchmarking) are set for the run and restored after it (:func:`run_settings`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from fsrf._errors import FSRFError

CUBLAS_WORKSPACE = ":4096:8"
"""``CUBLAS_WORKSPACE_CONFIG`` for deterministic cuBLAS (CUDA >= 10.2)."""

FP16_ON_CPU = "train.precision: fp16 needs a CUDA device; use bf16 or fp32 on CPU"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FSRFError(f"train.device: {name!r} requested but no CUDA device is available")
    return device


def check_precision(device: torch.device, precision: str) -> None:
    """fp16 runs on CUDA only (its gradient scaler and kernels are CUDA's).

    Raises:
        FSRFError: ``fp16`` on a device that is not CUDA.
    """
    if precision == "fp16" and device.type != "cuda":
        raise FSRFError(FP16_ON_CPU)


def eval_precision(device: torch.device, precision: str) -> str:
    """The precision to evaluate a run's model in on ``device``: its own, except that an fp16
    model evaluated off CUDA runs in fp32 (fp16 autocast is CUDA's)."""
    return "fp32" if precision == "fp16" and device.type != "cuda" else precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 or fp16 autocast when asked for, else a no-op context.

    Raises:
        FSRFError: fp16 on a device that is not CUDA.
    """
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        check_precision(device, precision)
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def grad_scaler(device: torch.device, precision: str) -> Any:
    """A gradient scaler, enabled for fp16 only (a disabled one passes everything through).

    Returns:
        ``torch.amp.GradScaler`` (``torch.cuda.amp.GradScaler`` before torch 2.3).
    """
    enabled = precision == "fp16"
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch 2.2


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``: from the CPU to CUDA through pinned memory without waiting for
    the copy; unchanged when it is already there."""
    if tensor.device == device or (device.type == "cpu" and tensor.device.type == "cpu"):
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


@contextlib.contextmanager
def run_settings(device: torch.device, *, tf32: bool, deterministic: bool) -> Iterator[None]:
    """Set torch's process-wide numerics for one run, and restore them after it.

    Args:
        device: the run's device; TF32 and the cuDNN flags matter on CUDA only.
        tf32: TF32 tensor cores for float32 matmuls and cuDNN convolutions/RNNs (CUDA, Ampere
            or later); False keeps float32 exact. No effect on the CPU.
        deterministic: ``torch.use_deterministic_algorithms(True)`` (an op without a
            deterministic implementation raises), cuDNN deterministic and not benchmarking,
            and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when unset. cuBLAS reads that variable
            when the process first uses it, so a process that ran CUDA matmuls before with
            another value keeps it (a warning says so).
    """
    saved_algorithms = (torch.are_deterministic_algorithms_enabled(),
                        torch.is_deterministic_algorithms_warn_only_enabled())
    saved_cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                   torch.backends.cudnn.allow_tf32)
    saved_matmul = torch.backends.cuda.matmul.allow_tf32
    try:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        if deterministic:
            if device.type == "cuda":
                _set_cublas_workspace()
                torch.backends.cudnn.benchmark = False
                torch.backends.cudnn.deterministic = True
            torch.use_deterministic_algorithms(True, warn_only=False)
        yield
    finally:
        torch.use_deterministic_algorithms(saved_algorithms[0], warn_only=saved_algorithms[1])
        (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
         torch.backends.cudnn.allow_tf32) = saved_cudnn
        torch.backends.cuda.matmul.allow_tf32 = saved_matmul


def _set_cublas_workspace() -> None:
    current = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if current in (CUBLAS_WORKSPACE, ":16:8"):
        return
    if current is None and not torch.cuda.is_initialized():
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
        return
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE  # torch checks it before each cuBLAS call
    print(f"train.deterministic: CUBLAS_WORKSPACE_CONFIG was {current!r} when CUDA started; cuBLAS may keep "
          f"that workspace: export CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE} before starting the process")


class CompiledForward:
    """A model's ``forward`` compiled with :func:`torch.compile`, with an eager fallback.

    torch compiles at the first call (and again for new shapes or modes). If a compiled call
    raises, the same call runs eagerly: when that succeeds, compiling was the fault, so one
    line saying why is printed and the model runs eagerly from then on; when it fails too, its
    error is the model's own and propagates. The backward pass compiles at the first backward;
    the trainer runs one step before training to catch that too (:func:`fsrf._steps.warm_up`).
    The state dict is untouched (no ``_orig_mod.`` prefix), so checkpoints are the same with
    and without compiling.

    Attributes:
        failure: why compiling failed (the error's type and first line), or None while compiled.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model
        self._eager = model.forward
        self._compiled = torch.compile(self._eager)
        self.failure: str | None = None

    @property
    def active(self) -> bool:
        """Whether calls still run compiled."""
        return self.failure is None

    def disable(self, err: BaseException) -> None:
        """Run eagerly from now on; ``err`` is why (see :meth:`announce`)."""
        text = str(err).strip()
        first = text.splitlines()[0][:200] if text else ""
        self.failure = f"{type(err).__name__}: {first}" if first else type(err).__name__

    def announce(self) -> None:
        """Print the one line that says compiling failed, and why."""
        print(f"train.compile: torch.compile failed ({self.failure}); running eagerly", flush=True)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failure is not None:
            return self._eager(*args, **kwargs)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 -- dynamo, inductor and the C compiler raise many types
            out = self._eager(*args, **kwargs)  # the model's own errors raise here
            self.disable(err)
            self.announce()
            return out


def compile_model(model: torch.nn.Module) -> CompiledForward:
    """Compile ``model``'s forward in place (see :class:`CompiledForward`); returns the wrapper."""
    compiled = CompiledForward(model)
    model.forward = compiled  # an instance attribute: nn.Module calls it; the class's forward stays
    return compiled
