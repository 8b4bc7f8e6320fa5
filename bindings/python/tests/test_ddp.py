"""Two-process DistributedDataParallel (gloo, CPU) over a tiny model whose loss is unireward's fused linear
log-probs and DPO: the averaged gradients equal those of one process on the whole batch."""

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import unireward

PAIRS, T, H, V = 4, 5, 6, 9


class TinyPolicy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(H, H)
        self.lm_head = torch.nn.Linear(H, V, bias=False)

    def forward(self, x, labels, ref_logps):
        hidden = torch.tanh(self.body(x))
        out = unireward.fused_linear_logprobs(hidden, self.lm_head.weight, labels)
        p = labels.shape[0] // 2
        loss, _ = unireward.ops.fused_dpo_loss(out.logps[:p], out.logps[p:], ref_logps[:p], ref_logps[p:], beta=0.5)
        return loss


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * PAIRS, T, H, generator=g)
    labels = torch.randint(0, V, (2 * PAIRS, T), generator=g)
    labels[:, 0] = -100
    ref_logps = -torch.rand(2 * PAIRS, generator=g) * 10
    return x, labels, ref_logps


def rows_of(rank, world):
    """A rank's share of the batch: its pairs' chosen rows, then their rejected rows."""
    per = PAIRS // world
    pairs = torch.arange(rank * per, (rank + 1) * per)
    return torch.cat([pairs, pairs + PAIRS])


def model():
    torch.manual_seed(1)
    return TinyPolicy()


def worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        net = torch.nn.parallel.DistributedDataParallel(model())
        x, labels, ref_logps = data()
        rows = rows_of(rank, world)
        net(x[rows], labels[rows], ref_logps[rows]).backward()
        if rank == 0:
            torch.save({n: p.grad for n, p in net.module.named_parameters()}, os.path.join(out_dir, "grads.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_gradients_equal_single_process():
    net = model()
    net(*data()).backward()
    expected = {n: p.grad for n, p in net.named_parameters()}
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        got = torch.load(os.path.join(tmp, "grads.pt"))
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
