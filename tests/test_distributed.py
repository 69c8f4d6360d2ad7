"""DDP with the gloo backend, 2 processes on CPU, against one process on the same global batch."""
from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _catalogs import BRANDS, COLOURS, draw_product

from catalogclip.models.backbones.base import BackboneConfig
from catalogclip.models.batch import Batch
from catalogclip.models.methods import build_method
from catalogclip.train import distributed


def global_batch(method) -> Batch:
    """8 rows, two of which share a product (a multi-positive pair across the two ranks)."""
    transform = method.backbone.image_transform(train=False)
    kinds = [(c, b) for c in COLOURS for b in BRANDS][:8]
    images = torch.stack([transform(draw_product(c, b)) for c, b in kinds])
    keys = torch.tensor([0, 1, 2, 3, 0, 5, 6, 7])  # rows 0 and 4 are one product
    texts = [f"{c} shirt {b}" for c, b in kinds]
    texts[4] = texts[0]
    entity_ids = torch.tensor([[2 + (i % 3)] for i in range(8)])
    return Batch(product_keys=keys, texts=texts, images=images, entity_ids=entity_ids)


def build(seed: int = 0):
    """EI-CLIP on the tiny backbone, in eval mode: BatchNorm uses running statistics, as per-rank
    batch statistics differ from the global batch's (the trainer uses SyncBatchNorm on CUDA)."""
    from catalogclip.catalog.vocab import EntityVocab, EntityVocabs

    torch.manual_seed(seed)
    vocabs = EntityVocabs([EntityVocab.build("brand", ["a", "b", "c"])])
    method = build_method("eiclip", BackboneConfig(spec="tiny", embed_dim=16), {"entity_groups": ["brand"]}, vocabs)
    return method.eval()


def rows(batch: Batch, index: slice) -> Batch:
    return Batch(
        product_keys=batch.product_keys[index], texts=batch.texts[index], images=batch.images[index], entity_ids=batch.entity_ids[index]
    )


def worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        method = build()
        method.gather = distributed.gather_with_grad
        model = torch.nn.parallel.DistributedDataParallel(method, find_unused_parameters=True)
        batch = global_batch(method)
        local = rows(batch, slice(rank * 4, rank * 4 + 4))
        losses = model(local)
        losses["loss"].backward()
        # numpy arrays travel by value: tensors in a queue would point at the exiting process's memory
        grads = {n: p.grad.numpy().copy() for n, p in method.named_parameters() if p.grad is not None}
        queue.put((rank, float(losses["loss"].detach()), grads if rank == 0 else None))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_one_process_loss_and_gradients():
    method = build()
    batch = global_batch(method)
    single = method(batch)
    single["loss"].backward()
    expected_grads = {n: p.grad for n, p in method.named_parameters() if p.grad is not None}

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted((queue.get(timeout=120) for _ in procs), key=lambda r: r[0])
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for _, loss, _ in results:
        assert loss == pytest.approx(float(single["loss"].detach()), rel=1e-5)
    ddp_grads = results[0][2]
    assert set(ddp_grads) == set(expected_grads)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(torch.from_numpy(ddp_grads[name]), grad, rtol=1e-4, atol=1e-6, msg=name)


def test_trainer_under_torchrun_trains_on_the_global_batch(brand_catalog, tmp_path):
    """`torchrun --nproc_per_node 2 -m catalogclip train ...`: two gloo ranks, one run folder."""
    import subprocess
    import sys

    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
        "-m", "catalogclip", "train", "--catalog", str(brand_catalog), "--method", "eiclip", "--entities", "brand",
        "--backbone", "tiny", "--epochs", "2", "--batch-size", "8", "--out", str(run), "--no-progress",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    # 26 training pairs (6 of 32 products held out), global batches of 8 (4 per rank): 3 per epoch,
    # the last 2 rows are dropped (fewer than 2 per rank)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 6
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["step"] == 6
    assert "gate/brand" in json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


def test_trainer_under_torchrun_on_two_nodes(brand_catalog, tmp_path):
    """The multi-node launch line, two machines simulated by two launchers on loopback:
    `torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint HOST:PORT ...` on each."""
    import subprocess
    import sys

    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "catalogclip-test",
        "-m", "catalogclip", "train", "--catalog", str(brand_catalog), "--method", "eiclip", "--entities", "brand",
        "--backbone", "tiny", "--epochs", "2", "--batch-size", "8", "--out", str(run), "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-2000:]
    # one world of 2 ranks across the "machines": the same 6 steps on global batches of 8 as one machine's 2 ranks
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 6
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["step"] == 6
    assert sum("trained eiclip" in out for out, _ in outputs) == 1  # global rank 0 speaks for the run
