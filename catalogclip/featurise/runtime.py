"""How a frozen tower runs: `torch` (eager PyTorch; `torch-channels-last` with NHWC activations, for
image towers) or `onnx` (ONNX Runtime), or `auto`.

An image tower takes pixels; a text tower takes the tensors its backbone's `text_inputs` makes of
strings (token ids and mask for MiniLM): tokenising stays in Python, the transformer runs in one
ONNX Runtime call that holds the interpreter lock once rather than once per PyTorch operator,
which is what lets the service's encoder threads and its request threads share two cores.

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
from catalogclip.models.batch import CACHED_IMAGE_FIELDS
from catalogclip.registry import Registry

log = logging.getLogger(__name__)

#: minimum cosine of every row to eager fp32 PyTorch for a runtime to stand in for it
AGREEMENT = 0.9999
PRECISION = "fp32"


class TowerOutputs(nn.Module):
    """A backbone's image tower as pixels (B, 3, H, W) -> "features" (B, F), "tokens" (B, N, C), or
    the "prefix" (B, C, h, w) of a tower whose last blocks train (its frozen front's output)."""

    def __init__(self, backbone: Backbone, kind: str = "features") -> None:
        super().__init__()
        if kind not in CACHED_IMAGE_FIELDS:
            raise ValueError(f"unknown image tower output '{kind}' (known: {', '.join(CACHED_IMAGE_FIELDS)})")
        self.backbone = backbone
        self.kind = kind

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return getattr(self.backbone, CACHED_IMAGE_FIELDS[self.kind])(pixels)

    input_names = ("pixels",)

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        size = self.backbone.preprocess.size
        return (torch.zeros(2, 3, size, size, device=self.backbone.device),)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {"pixels": {0: "batch"}, "outputs": {0: "batch"}}


#: strings that exercise a text tower's export and calibration: padding, one word, no word at all
SAMPLE_TEXTS = ("red cotton shirt for men", "shoes", "slim fit blue denim jeans with a zip fly", "!")


class TextTowerOutputs(nn.Module):
    """A backbone's text tower as its `text_inputs` tensors -> pooled features (B, F_txt)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.input_names = tuple(backbone.text_inputs(list(SAMPLE_TEXTS)))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.backbone.text_tower_outputs(dict(zip(self.input_names, inputs)))

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.backbone.text_inputs(list(SAMPLE_TEXTS)).values())

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Every axis of every input is free (batch, tokens; a flat token list's length)."""
        axes = {name: {d: f"{name}_{d}" for d in range(x.dim())} for name, x in zip(self.input_names, self.example_inputs())}
        return {**axes, "outputs": {0: "batch"}}


TowerModule = TowerOutputs | TextTowerOutputs


class Tower(Protocol):
    """A running tower: CPU input tensors (pixels; or a text tower's inputs) -> float32 outputs
    (numpy), plus what it is for the record."""

    name: str

    def __call__(self, *inputs: torch.Tensor) -> np.ndarray: ...


TOWER_RUNTIMES: Registry[Callable[[TowerModule], Tower]] = Registry("tower runtime")


@TOWER_RUNTIMES.register("torch")
class TorchTower:
    """Eager PyTorch on the backbone's device; `channels_last` lays out activations as NHWC."""

    def __init__(self, module: TowerModule, channels_last: bool = False) -> None:
        self.module = module.eval()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.name = f"torch {torch.__version__} {PRECISION}" + (" channels-last" if channels_last else "")

    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor) -> np.ndarray:
        inputs = tuple(x.to(self.module.backbone.device).contiguous(memory_format=self.memory_format) for x in inputs)
        return self.module(*inputs).float().cpu().numpy()


TOWER_RUNTIMES.register("torch-channels-last")(lambda module: TorchTower(module, channels_last=True))


@TOWER_RUNTIMES.register("onnx")
class OnnxTower:
    """ONNX Runtime on CPU, from the tower exported in memory (a second or two for EfficientNet-Lite0)."""

    def __init__(self, module: TowerModule, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle pool threads sleep rather than spin: decoding runs beside the forward pass on the same cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: not the optimiser's notes on exported subgraphs
        self.session = ort.InferenceSession(export_onnx(module), options, providers=["CPUExecutionProvider"])
        self.input_names = module.input_names
        self.name = f"onnxruntime {ort.__version__} {PRECISION}"

    def __call__(self, *inputs: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {name: _numpy_input(x) for name, x in zip(self.input_names, inputs)})[0]


def _numpy_input(x: torch.Tensor) -> np.ndarray:
    x = x.detach().cpu()
    return (x.float() if x.is_floating_point() else x).numpy()


def export_onnx(module: TowerModule) -> bytes:
    """The tower as an ONNX model with free batch (and token) axes (TorchScript-based exporter; writes with `onnx`)."""
    module = module.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        torch.onnx.export(
            module, module.example_inputs(), buffer, input_names=list(module.input_names), output_names=["outputs"],
            dynamic_axes=module.dynamic_axes(), opset_version=17, dynamo=False,
        )
    return buffer.getvalue()


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest row-wise cosine between two equally shaped arrays (rows flattened); equal rows
    count as 1 (two zero rows too: a text without words pools to zeros)."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosines = np.where((a == b).all(1), 1.0, (a * b).sum(1) / np.maximum(norms, 1e-30))
    return float(cosines.min()) if len(a) else 1.0


def open_tower(backbone: Backbone, kind: str, runtime: str, sample: torch.Tensor) -> Tower:
    """The image tower on `runtime` ("torch", "onnx" or "auto"); `sample`, a first batch, calibrates "auto"."""
    return open_runtime(TowerOutputs(backbone, kind), runtime, sample)


def open_text_tower(backbone: Backbone, runtime: str) -> Tower:
    """The text tower on `runtime` ("torch", "onnx" or "auto"), called with the tensors of
    `backbone.text_inputs(texts)`; `SAMPLE_TEXTS` calibrate "auto". NotImplementedError: the
    backbone cannot hand its tower tensors (it stays on its own `text_features`)."""
    module = TextTowerOutputs(backbone)
    return open_runtime(module, runtime, *module.example_inputs(), repeats=3)  # a few short texts: best of three


def open_runtime(module: TowerModule, runtime: str, *sample: torch.Tensor, repeats: int = 1) -> Tower:
    """`module` on `runtime`; for "auto", ONNX Runtime where it agrees and is faster on `sample`."""
    if runtime != "auto":
        return TOWER_RUNTIMES.get(runtime)(module)
    reference = TorchTower(module)
    what = "text" if isinstance(module, TextTowerOutputs) else "image"
    if module.backbone.device.type != "cpu":
        return reference
    try:
        candidate = OnnxTower(module)
    except Exception as exc:  # noqa: BLE001  no onnxruntime, or a tower the exporter cannot trace
        log.info("%s tower stays on PyTorch: ONNX Runtime unavailable (%s)", what, exc)
        return reference
    return faster_if_equal(reference, candidate, *sample, repeats=repeats)


def faster_if_equal(reference: Tower, candidate: Tower, *sample: torch.Tensor, repeats: int = 1) -> Tower:
    """`candidate` when its outputs on the inputs `sample` agree with `reference`'s and it runs
    faster (the best of `repeats` runs), else `reference`."""
    candidate(*sample)  # first-run set-up is not the steady pace
    seconds = {}
    outputs = {}
    for tower in (reference, candidate):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            outputs[tower.name] = tower(*sample)
            times.append(time.perf_counter() - start)
        seconds[tower.name] = min(times)
    cosine = min_cosine(outputs[reference.name], outputs[candidate.name])
    if cosine < AGREEMENT:
        log.warning("tower stays on %s: %s differs (min cosine %.6f < %s)", reference.name, candidate.name, cosine, AGREEMENT)
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
