"""The training loop: AdamW, warmup + cosine schedule, accumulation, clipping, mixed precision on
GPU, atomic checkpoints, exact resume, JSON-lines metrics, a progress bar, DDP under torchrun.

Resume is exact: a checkpoint holds the model, optimiser, schedule, position in the epoch and the
random states, and batch order depends only on (seed, epoch), so a run killed after k steps and
resumed ends with the same weights as an unbroken run. The checkpoint's config is the truth: a
resume with settings outside `RESUMABLE` changed is refused, and nothing in the run folder is
written until the checkpoint has loaded (then metrics.jsonl is cut back to its step, so no step
is ever logged twice).
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.schema import Catalog, read_jsonl
from catalogclip.io import atomic_path, atomic_write_json, atomic_write_text
from catalogclip.models import methods
from catalogclip.models.methods import Method
from catalogclip.train import distributed
from catalogclip.train.checkpoint import load_trainable_state, trainable_state
from catalogclip.train.config import RESUMABLE, RunConfig
from catalogclip.train.data import PairData, build_pairs, iterate_batches, loader_workers, usable_batches
from catalogclip.train.plan import Plan, make_plan
from catalogclip.train.runs import feature_cache_dir

#: called after every optimiser step with the step's record (loss values on log steps only)
StepHook = Callable[[int, dict], None]
PlanHook = Callable[[Plan], None]


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    last_loss: float
    pairs: int
    problems: ProblemLog
    plan: Plan


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier: linear warmup to 1, then cosine decay to 0 at `total` steps."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def parameter_groups(method: Method, lr: float, head_lr: float, weight_decay: float) -> list[dict]:
    """Pretrained backbone parameters at `lr`; everything freshly initialised at `head_lr`."""
    prefixes = tuple(f"backbone.{p}" for p in method.backbone.new_parameter_prefixes)
    pretrained, new = [], []
    for name, param in method.named_parameters():
        if not param.requires_grad:
            continue
        is_new = not name.startswith("backbone.") or name.startswith(prefixes)
        (new if is_new else pretrained).append(param)
    groups = [{"params": new, "lr": head_lr, "weight_decay": weight_decay}]
    if pretrained:
        groups.append({"params": pretrained, "lr": lr, "weight_decay": weight_decay})
    return groups


def capture_rng() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Train one run. The run folder layout is documented in the README ("Run folders")."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        on_step: StepHook | None = None,
        progress: bool = True,
        on_plan: PlanHook | None = None,
    ):
        self.config = config
        self.run_dir = Path(run_dir)
        self.on_step = on_step
        self.on_plan = on_plan
        self.progress = progress
        self.problems = ProblemLog()
        self.distributed = distributed.init_from_env()
        self.rank, self.world_size = distributed.rank_and_world()
        self.device = resolve_device(config.optim.device)
        if self.distributed and self.device.type == "cuda":
            # the machine's GPUs by local rank: global ranks run on past one machine's count under --nnodes
            self.device = torch.device("cuda", distributed.local_rank() % torch.cuda.device_count())

    # --- set-up -------------------------------------------------------------------------------
    def _load_catalog(self) -> Catalog:
        path = Path(self.config.data.catalog)
        if not path.exists():
            raise FileNotFoundError(f"{path}: catalog not found")
        catalog = read_jsonl(path, self.problems, self.config.data.image_root)
        if not len(catalog):
            raise ValueError(f"{path}: no usable product")
        return catalog

    def setup(self, resuming: bool = False) -> tuple[Method, PairData]:
        """The method and its training pairs; writes nothing (see `_write_run_files`). A resumed
        run keeps the entity vocabularies it was trained with."""
        from catalogclip.catalog.splits import make_split
        from catalogclip.catalog.vocab import EntityVocabs, build_vocabs

        cfg = self.config
        seed_everything(cfg.optim.seed)
        catalog = self._load_catalog()
        self.split = make_split(catalog, cfg.data.split_by, cfg.data.test_fraction, cfg.data.split_seed)
        method_config = methods.method_config(cfg.method, cfg.method_options)
        self.vocabs = None
        vocab_path = self.run_dir / "vocabs.json"
        if method_config.entity_groups:
            reuse = resuming and vocab_path.exists()
            self.vocabs = EntityVocabs.load(vocab_path) if reuse else build_vocabs(self.split.train, method_config.entity_groups)
        method = methods.build_method(cfg.method, cfg.backbone, method_config, self.vocabs)
        method.to(self.device)
        cache_dir = feature_cache_dir(cfg, self.run_dir)
        data = build_pairs(method, self.split.train, self.problems, cfg.data.sources, cache_dir, cfg.data.cache_features)
        return method, data

    def _write_run_files(self, step: int) -> None:
        """Config, split and vocabularies of the run, and its metrics cut back to `step`."""
        if not distributed.is_main():
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config.save(self.run_dir / "config.yaml")
        self.split.save(self.run_dir / "split.json")
        if self.vocabs is not None:
            self.vocabs.save(self.run_dir / "vocabs.json")
        self._truncate_metrics(step)

    # --- the loop -----------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainResult:
        cfg, opt = self.config, self.config.optim
        saved = self._saved_state() if resume else None  # refuses changed settings before any work
        method, data = self.setup(resuming=saved is not None)
        model: nn.Module = method
        if self.distributed:
            method.gather = distributed.gather_with_grad
            if self.device.type == "cuda":  # batch statistics of the global batch, as one process would see
                method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
            model = nn.parallel.DistributedDataParallel(
                method, device_ids=[self.device.index] if self.device.type == "cuda" else None, find_unused_parameters=True
            )
        optimizer = torch.optim.AdamW(parameter_groups(method, opt.lr, opt.head_lr, opt.weight_decay))
        per_epoch = len(usable_batches(data, opt.batch_size, opt.seed, 0, method.views_per_product, self.world_size,
                                       cfg.data.main_shot_in_batch))
        plan = make_plan(opt, per_epoch, len(data))
        if self.on_plan is not None and distributed.is_main():
            self.on_plan(plan)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(opt.warmup_steps, plan.steps))
        step, epoch, skip = 0, 0, 0
        if saved is not None:
            step, epoch, skip = self._restore(saved, method, optimizer, scheduler)
        self._write_run_files(step)
        last_step = plan.stop
        bar = tqdm(total=last_step, initial=step, disable=not (self.progress and distributed.is_main()), desc=f"train {cfg.method}", unit="step")
        last_loss = float("nan")
        losses: dict = {}
        window_start, window_pairs = time.perf_counter(), 0
        micro = 0
        workers = loader_workers(cfg.data.loader_workers, data, self.device)
        model.train()
        while step < last_step and epoch < plan.epochs:
            for batch_no, batch in enumerate(
                iterate_batches(method, data, opt.batch_size, opt.seed, epoch, skip, self.rank, self.world_size, workers,
                                cfg.data.main_shot_in_batch), start=skip
            ):
                losses = self._forward(model, batch.to(self.device))
                (losses["loss"] / opt.grad_accum).backward()
                window_pairs += len(batch) * self.world_size
                micro += 1
                if micro % opt.grad_accum:
                    continue
                self._optimizer_step(method, optimizer, scheduler)
                step += 1
                record = {"step": step, "epoch": epoch}
                # loss values are read only on log steps: reading one waits for the GPU to finish the step
                if step % opt.log_every == 0 or step == last_step:
                    pairs_per_s = window_pairs / (time.perf_counter() - window_start)
                    record.update({k: round(float(v.detach()), 5) for k, v in losses.items()})
                    record.update(method.log_values(), lr=scheduler.get_last_lr()[0], pairs_per_s=round(pairs_per_s, 2))
                    self._log(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", pairs_per_s=f"{pairs_per_s:.1f}")
                    window_start, window_pairs = time.perf_counter(), 0
                bar.update(1)
                if step % opt.checkpoint_every == 0 or step == last_step:
                    self._checkpoint(method, optimizer, scheduler, step, epoch, batch_no + 1)
                if self.on_step is not None:
                    self.on_step(step, record)
                if step >= last_step:
                    break
            else:
                epoch, skip = epoch + 1, 0
                continue
            break
        if losses:
            last_loss = float(losses["loss"].detach())
        bar.close()
        self._finish(method)
        return TrainResult(self.run_dir, step, last_loss, len(data), self.problems, plan)

    def _forward(self, model: nn.Module, batch) -> dict:
        if self.device.type == "cuda" and self.config.optim.amp:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model(batch)
        return model(batch)

    def _optimizer_step(self, method: Method, optimizer, scheduler) -> None:
        clip = self.config.optim.grad_clip
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([p for p in method.parameters() if p.grad is not None], clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()

    # --- files --------------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        if distributed.is_main():
            with (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    def _checkpoint(self, method: Method, optimizer, scheduler, step: int, epoch: int, next_batch: int) -> None:
        if not distributed.is_main():
            return
        state = {
            "model": trainable_state(method),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "epoch": epoch,
            "next_batch": next_batch,
            "rng": capture_rng(),
            "config": self.config.to_dict(),
        }
        folder = self.run_dir / "checkpoints"
        with atomic_path(folder / "last.pt") as tmp:
            torch.save(state, tmp)

    def _saved_state(self) -> dict | None:
        """The run's last checkpoint (None: there is none, the run starts afresh); ValueError
        listing the differences when this config changes settings the run fixed."""
        path = self.run_dir / "checkpoints" / "last.pt"
        if not path.exists():
            return None
        state = torch.load(path, map_location=self.device, weights_only=False)
        conflicts = self.config.resume_conflicts(state["config"])
        if conflicts:
            listed = "\n  ".join(conflicts)
            raise ValueError(
                f"{self.run_dir}: cannot resume with other settings than the run's (run -> given):\n  {listed}\n"
                f"only {', '.join(sorted(RESUMABLE))} may change on resume; train into a new --out to change the others"
            )
        return state

    def _restore(self, state: dict, method: Method, optimizer, scheduler) -> tuple[int, int, int]:
        load_trainable_state(method, state["model"], str(self.run_dir / "checkpoints" / "last.pt"))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"])
        return state["step"], state["epoch"], state["next_batch"]

    def _truncate_metrics(self, step: int) -> None:
        """Drop log lines written after the checkpoint (all of them when starting afresh): the
        run writes them again."""
        path = self.run_dir / "metrics.jsonl"
        if path.exists():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
            atomic_write_text(path, "".join(f"{line}\n" for line in kept))

    def _finish(self, method: Method) -> None:
        if distributed.is_main() and hasattr(method, "gate_values"):
            atomic_write_json(self.run_dir / "gates.json", method.gate_values())
        if self.problems.problems and distributed.is_main():
            self.problems.write(self.run_dir / "problems.txt")


def train(config: RunConfig, run_dir: str | Path, resume: bool = False, **kwargs) -> TrainResult:
    return Trainer(config, run_dir, **kwargs).fit(resume=resume)
