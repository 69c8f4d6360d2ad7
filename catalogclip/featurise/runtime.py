"""How a frozen image tower runs: `torch` (eager PyTorch; `torch-channels-last` with NHWC activations)
or `onnx` (ONNX Runtime), or `auto`.

Both compute in fp32 and agree to a cosine of 1.000000 on EfficientNet-Lite0, so they are one
precision class: features from either are interchangeable and the feature cache's key does not
change with the runtime (each shard records which one made it). `auto` exports the tower to ONNX,
runs both on the first batch, and keeps ONNX Runtime only where every row's cosine to PyTorch is
at least `AGREEMENT` and it is faster. Reduced precision (bf16, int8) missed a 0.999 cosine bar
on EfficientNet-Lite0, so no runtime here offers it.
"""
from __future__ import annotations

import io
import logging
import time
import warnings
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

from catalogclip.models.backbones.base import Backbone
from catalogclip.registry import Registry

log = logging.getLogger(__name__)

#: minimum cosine of every row to eager fp32 PyTorch for a runtime to stand in for it
AGREEMENT = 0.9999
PRECISION = "fp32"


class TowerOutputs(nn.Module):
    """A backbone's image tower as pixels (B, 3, H, W) -> "features" (B, F) or "tokens" (B, N, C)."""

    def __init__(self, backbone: Backbone, kind: str = "features") -> None:
        super().__init__()
        if kind not in ("features", "tokens"):
            raise ValueError(f"unknown image tower output '{kind}' (known: features, tokens)")
        self.backbone = backbone
        self.kind = kind

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.kind == "tokens":
            return self.backbone.image_tokens(pixels)
        return self.backbone.image_features(pixels)


class Tower(Protocol):
    """A running tower: CPU pixels -> float32 outputs (numpy), plus what it is for the record."""

    name: str

    def __call__(self, pixels: torch.Tensor) -> np.ndarray: ...


TOWER_RUNTIMES: Registry[Callable[[TowerOutputs], Tower]] = Registry("tower runtime")


@TOWER_RUNTIMES.register("torch")
class TorchTower:
    """Eager PyTorch on the backbone's device; `channels_last` lays out activations as NHWC."""

    def __init__(self, module: TowerOutputs, channels_last: bool = False) -> None:
        self.module = module.eval()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.name = f"torch {torch.__version__} {PRECISION}" + (" channels-last" if channels_last else "")

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> np.ndarray:
        pixels = pixels.to(self.module.backbone.device).contiguous(memory_format=self.memory_format)
        return self.module(pixels).float().cpu().numpy()


TOWER_RUNTIMES.register("torch-channels-last")(lambda module: TorchTower(module, channels_last=True))


@TOWER_RUNTIMES.register("onnx")
class OnnxTower:
    """ONNX Runtime on CPU, from the tower exported in memory (a second or two for EfficientNet-Lite0)."""

    def __init__(self, module: TowerOutputs, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle pool threads sleep rather than spin: decoding runs beside the forward pass on the same cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(export_onnx(module), options, providers=["CPUExecutionProvider"])
        self.name = f"onnxruntime {ort.__version__} {PRECISION}"

    def __call__(self, pixels: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {"pixels": pixels.detach().cpu().float().numpy()})[0]


def export_onnx(module: TowerOutputs) -> bytes:
    """The tower as an ONNX model with a free batch axis (TorchScript-based exporter; writes with `onnx`)."""
    module = module.eval()
    size = module.backbone.preprocess.size
    example = torch.zeros(2, 3, size, size, device=module.backbone.device)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        torch.onnx.export(
            module, (example,), buffer, input_names=["pixels"], output_names=["outputs"],
            dynamic_axes={"pixels": {0: "batch"}, "outputs": {0: "batch"}}, opset_version=17, dynamo=False,
        )
    return buffer.getvalue()


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest row-wise cosine between two equally shaped arrays (rows flattened)."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(((a * b).sum(1) / np.maximum(norms, 1e-30)).min()) if len(a) else 1.0


def open_tower(backbone: Backbone, kind: str, runtime: str, sample: torch.Tensor) -> Tower:
    """The tower on `runtime` ("torch", "onnx" or "auto"); `sample`, a first batch, calibrates "auto"."""
    module = TowerOutputs(backbone, kind)
    if runtime != "auto":
        return TOWER_RUNTIMES.get(runtime)(module)
    reference = TorchTower(module)
    if backbone.device.type != "cpu":
        return reference
    try:
        candidate = OnnxTower(module)
    except Exception as exc:  # noqa: BLE001  no onnxruntime, or a tower the exporter cannot trace
        log.info("image tower stays on PyTorch: ONNX Runtime unavailable (%s)", exc)
        return reference
    return faster_if_equal(reference, candidate, sample)


def faster_if_equal(reference: Tower, candidate: Tower, sample: torch.Tensor) -> Tower:
    """`candidate` when its outputs on `sample` agree with `reference`'s and it runs faster, else `reference`."""
    candidate(sample[:2])  # first-run set-up is not the steady pace
    seconds = {}
    outputs = {}
    for tower in (reference, candidate):
        start = time.perf_counter()
        outputs[tower.name] = tower(sample)
        seconds[tower.name] = time.perf_counter() - start
    cosine = min_cosine(outputs[reference.name], outputs[candidate.name])
    if cosine < AGREEMENT:
        log.warning("image tower stays on %s: %s differs (min cosine %.6f < %s)", reference.name, candidate.name, cosine, AGREEMENT)
        return reference
    return candidate if seconds[candidate.name] < seconds[reference.name] else reference


class TowerForward:
    """The `Forward` of a backbone's image tower outputs for the embedding engines; opened once per
    process (the ONNX export and the `auto` calibration are paid once, not per job)."""

    def __init__(self, backbone: Backbone, kind: str = "features", runtime: str = "auto") -> None:
        self.backbone = backbone
        self.kind = kind
        self.runtime = runtime
        self._tower: Tower | None = None

    def open(self, sample: torch.Tensor) -> Tower:
        if self._tower is None:
            self._tower = open_tower(self.backbone, self.kind, self.runtime, sample)
        return self._tower

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tower": None}  # a runtime session stays in the process that opened it
