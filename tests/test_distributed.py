"""Training under torchrun: 2 gloo processes on the CPU take the same steps as one
process with the same global batch; only trainable tensors are all-reduced; rank 0 writes."""

import json
import textwrap

import pytest
import torch

from conftest import TRAIN_TINY, torchrun
from reservoir_depth import distributed
from reservoir_depth.models import build
from reservoir_depth.scaffold import ScaffoldConfig, scaffold

SCRIPT = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from reservoir_depth import data, distributed, io
    from reservoir_depth.distributions import torch_rng
    from reservoir_depth.models import build
    from reservoir_depth.scaffold import ScaffoldConfig, scaffold
    from reservoir_depth.train import TrainConfig, train

    d = data.load("digits")
    with torch_rng(0):
        model = build("mlp", d_in=d.d_in, n_out=d.n_out, hidden=[32, 16], dropout=0.0)
    model = scaffold(model, ScaffoldConfig(target_modules=model.scaffold_targets, trainable=model.scaffold_trainable,
                                           r=4, root_seed=3))
    hist = train(model, d, TrainConfig(epochs=2, batch_size=100, seed=0, progress=False))
    rank, size = distributed.world()
    state = {k: v.tolist() for k, v in model.state_dict().items() if "lora" in k or "beta" in k or "head" in k}
    out = {"rank": rank, "size": size, "state": state, "final": hist.final, "reduced": distributed.trainable_bytes(model)}
    with open(sys.argv[1] + f".{rank}.json", "w") as f:
        json.dump(out, f)
    distributed.finish()
""")


def _run(tmp_path, nproc):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    torchrun([script, tmp_path / f"out{nproc}"], nproc=nproc)
    return [json.loads((tmp_path / f"out{nproc}.{r}.json").read_text()) for r in range(nproc)]


def test_two_gloo_processes_take_the_steps_of_one_with_the_same_global_batch(tmp_path):
    (one,) = _run(tmp_path, 1)
    two = _run(tmp_path, 2)
    assert [o["size"] for o in two] == [2, 2] and one["size"] == 1
    for other in two:
        assert other["state"].keys() == one["state"].keys()
        for k in one["state"]:
            torch.testing.assert_close(torch.tensor(other["state"][k]), torch.tensor(one["state"][k]),
                                       rtol=1e-4, atol=1e-5, msg=k)
    assert two[0]["final"]["test_acc"] == pytest.approx(one["final"]["test_acc"], abs=1e-9)


def test_shard_weights_make_the_global_mean(monkeypatch):
    """Rank k takes rows k, k + N, ...; its mean loss weighted by N x share sums (over ranks, / N) to the
    global mean, also for an uneven last batch."""
    idx = torch.arange(7)
    losses = torch.rand(7, generator=torch.Generator().manual_seed(0))
    total = 0.0
    for rank in range(3):
        monkeypatch.setattr(distributed, "world", lambda rank=rank: (rank, 3))
        mine, weight = distributed.shard(idx)
        assert mine.tolist() == list(range(rank, 7, 3))
        total += weight * losses[mine].mean() / 3
    assert float(total) == pytest.approx(float(losses.mean()))
    monkeypatch.setattr(distributed, "world", lambda: (0, 1))
    assert distributed.shard(idx) == (idx, 1.0)


def test_only_trainable_tensors_are_reduced():
    model = build("mlp", d_in=64, n_out=10, hidden="small")
    full = distributed.trainable_bytes(model)
    lotta = scaffold(build("mlp", d_in=64, n_out=10, hidden="small"),
                     ScaffoldConfig(target_modules=model.scaffold_targets, trainable=model.scaffold_trainable, r=2))
    assert distributed.trainable_bytes(lotta) == 4 * sum(p.numel() for p in lotta.parameters() if p.requires_grad)
    assert distributed.trainable_bytes(lotta) < full / 5


def test_cli_train_under_torchrun_writes_once(tmp_path):
    """`torchrun -m reservoir_depth train --save DIR`: both processes train, rank 0 alone prints and saves."""
    res = torchrun([*TRAIN_TINY, "--save", tmp_path / "adapter"], cwd=tmp_path)
    assert res.stdout.count("trainable") == 1 and (tmp_path / "adapter" / "adapter.json").exists()


def test_finish_waits_for_every_rank_then_takes_the_group_down():
    """A process group left up at exit aborts gloo's threads at interpreter teardown ("terminate called without
    an active exception", seen on CI under torchrun): finish() closes it; outside a group it does nothing."""
    import torch.distributed as dist

    distributed.finish()  # no group: nothing to do, no error
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    assert dist.is_initialized()
    distributed.finish()
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    distributed.finish(wait=False)
    assert not dist.is_initialized()


def test_cli_train_finishes_the_process_group_also_when_training_fails(monkeypatch):
    from reservoir_depth import cli

    calls = []
    monkeypatch.setattr(distributed, "finish", lambda wait=True: calls.append(wait))
    assert cli.main(["train", "--epochs", "1", "--hidden", "tiny", "--no-progress"]) == 0
    assert calls == [True]

    def broken(*args, **kwargs):
        raise FloatingPointError("the model's loss is nan")

    monkeypatch.setattr(cli, "train", broken)
    assert cli.main(["train", "--epochs", "1", "--hidden", "tiny", "--no-progress"]) != 0
    assert calls == [True, False]  # after a failure the group goes down without waiting for the others
