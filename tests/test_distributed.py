"""Multi-process training (train/distributed.py): 2 gloo processes on CPU against 1 process, DDP and FSDP2."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

from helpers import final_weights, records, tiny_model_config, tiny_run, write_run_dir
from metapretrain import checkpoint as ckpt
from metapretrain import paths
from metapretrain.config.load import run_config_from_dict
from metapretrain.config.overrides import deep_merge
from metapretrain.train import distributed
from metapretrain.train.batches import TokenBatches

RUN = tiny_run(train={"budget": {"value": 6}, "batch_size": 4, "grad_accum": 2, "decay_steps": 6, "eval_every": 3,
                      "eval_batches": 1, "checkpoint": {"every": 2, "log_spaced": 0}})
META = {"learner": "fomaml", "hybrid_ratio": 0.5,
        "episode": {"n_way": 4, "k_shot": 2, "q_query": 2, "window": 16, "min_count": 8, "max_frequency": 0.05},
        "head": {"layers": 2, "width": 16}, "inner": {"steps": 2, "lr": 0.05}}


def make_run(root: Path, name: str, meta: dict | None = None, strategy: str = "auto") -> Path:
    over = {"train": {"distributed": {"strategy": strategy}}} | ({"meta": meta} if meta else {})
    return write_run_dir(root, name, deep_merge(RUN, over))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------- process bodies

def _worker(rank: int, world: int, port: int, mode: str, run_dir: str, data_dir: str, out: str, steps: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if mode == "train":
        from metapretrain.train.stage import train_run

        train_run(run_dir, data_dir)
    else:
        _check_updates(run_dir, data_dir, out, steps)


def _primitives(rank: int, world: int, port: int, out: str) -> None:
    """Distributed's collectives on 2 gloo ranks; each rank writes what it saw to `out`.rank."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    d = distributed.Distributed(distributed.DistEnv(rank, world, rank, "torchrun"), "ddp")
    d.init_group(torch.device("cpu"))
    seen = {"any": d.any(rank == 1), "none": d.any(False),
            "scalars": d.reduce_scalars([10.0 * (rank + 1)], [float(rank), 4.0])}

    def fail():
        raise OSError("disk full")

    try:
        d.on_main(fail, "write a checkpoint")
    except (OSError, RuntimeError) as exc:
        seen["error"] = f"{type(exc).__name__}: {exc}"
    seen["value"] = d.on_main(lambda: "from rank 0", "compute")
    d.barrier()  # as train_run does: no rank tears gloo down while another still uses it
    d.close()
    Path(f"{out}.{rank}").write_text(json.dumps(seen))


def _check_updates(run_dir: str, data_dir: str, out: str, steps: int) -> None:
    """`steps` updates; after each, the ranks' gradients (at the optimizer step) and weights are compared.

    Writes rank 0's per-update records, the largest cross-rank differences and its final full weights.
    """
    from metapretrain.config import load_run_config
    from metapretrain.train.loop import Trainer

    cfg = load_run_config(paths.resolved_config(run_dir))
    dist, _ = distributed.setup(cfg, torch.device("cpu"))
    trainer = Trainer(run_dir, data_dir, cfg, run_id="check", experiment=None, dist=dist)
    diffs = {"grad": 0.0, "weight": 0.0}

    def spread(tensors) -> float:
        if not dist.active:
            return 0.0
        import torch.distributed as td

        flat = torch.cat([distributed._full(t).reshape(-1).float() for t in tensors])
        got = [torch.empty_like(flat) for _ in range(dist.world)]
        td.all_gather(got, flat)
        return max(float((g - got[0]).abs().max()) for g in got)

    def before_step(opt, args, kwargs):
        # Sharded (FSDP) gradients differ by construction; only replicated ones must agree.
        grads = [p.grad for p in trainer.params if p.grad is not None and not _is_dtensor(p.grad)]
        if grads:
            diffs["grad"] = max(diffs["grad"], spread(grads))

    trainer.optimizer.register_step_pre_hook(before_step)
    records = []
    for _ in range(steps):
        records.append(trainer.update())
        diffs["weight"] = max(diffs["weight"], spread([*trainer.model.state_dict().values(), *trainer.extra_params]))
    weights = dist.model_state(trainer.model)
    head = {k: v.detach().clone() for k, v in trainer.modules().get("episode_head", torch.nn.Linear(1, 1)).state_dict().items()}
    if dist.is_main:
        torch.save({"records": records, "diffs": diffs, "weights": weights, "head": head}, out)
    # As train_run does: a rank destroying gloo while the other still used it aborted this test once
    # ("terminate called without an active exception").
    dist.barrier()
    dist.close()


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def spawn(world: int, mode: str, run: Path, data: Path, out: Path | None = None, steps: int = 0) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(world, free_port(), mode, str(run), str(data), str(out), steps), nprocs=world)


def assert_weights_close(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


# ------------------------------------------------------------------ fast units

def test_env_detection_and_strategy():
    env = distributed.detect_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.source, env.is_main) == (1, 2, 1, "torchrun", False)
    assert distributed.detect_env({}) == distributed.DistEnv()
    assert distributed.resolve_strategy("auto", 1) == "none"
    assert distributed.resolve_strategy("fsdp", 1) == "none"
    assert distributed.resolve_strategy("auto", 2) == "ddp"
    with pytest.raises(distributed.DistributedConfigError, match="strategy=none"):
        distributed.resolve_strategy("none", 2)


def test_config_errors_name_the_keys():
    env = distributed.DistEnv(0, 2)
    odd = run_config_from_dict({"train": {"batch_size": 3}})
    with pytest.raises(distributed.DistributedConfigError, match="train.batch_size=3"):
        distributed.check_config(odd, env, "ddp")
    reptile = run_config_from_dict({"train": {"batch_size": 4}, "meta": {"learner": "reptile"}})
    distributed.check_config(reptile, env, "ddp")
    with pytest.raises(distributed.DistributedConfigError, match="strategy=fsdp.*meta.learner=reptile"):
        distributed.check_config(reptile, env, "fsdp")


def test_the_distributed_layer_reads_what_a_step_kind_declares(monkeypatch):
    """FSDP refusal and DDP sync follow the kinds' attributes, not their names."""
    from metapretrain.train import steps

    env = distributed.DistEnv(0, 2)
    distributed.check_config(run_config_from_dict({"train": {"batch_size": 4}}), env, "fsdp")

    class Unshardable(steps.NextTokenStep):
        supports_fsdp = False

    monkeypatch.setitem(steps._STEP_KINDS, "next_token", Unshardable)
    with pytest.raises(distributed.DistributedConfigError, match="strategy=fsdp cannot run step kind next_token"):
        distributed.check_config(run_config_from_dict({"train": {"batch_size": 4}}), env, "fsdp")

    d = distributed.Distributed(env, "ddp")
    unsynced = []

    class Wrapper:
        def no_sync(self):
            unsynced.append(True)
            return contextlib.nullcontext()

    d.wrapped = Wrapper()
    wrapper, explicit = steps.step_kind("next_token"), type("Explicit", (), {"grad_sync": "explicit"})
    for kind, final in ((wrapper, True), (wrapper, False), (explicit, True)):
        with d.micro_step(final=final, kind=kind):
            pass
    assert unsynced == [True, True]  # only a final micro-step of a `wrapper` kind syncs in its backward
    reduced = []
    monkeypatch.setattr(d, "all_reduce_mean_", reduced.append)
    model, head = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(1))
    model.grad, head.grad = torch.ones(2), torch.ones(1)
    d.sync_grads([model], [head], last_kind=wrapper)
    d.sync_grads([model], [head], last_kind=explicit)
    assert [len(r) for r in reduced] == [1, 2]  # the model's gradients too when the wrapper did not sync them


def test_episode_seed_keeps_rank0_and_separates_ranks():
    assert distributed.episode_seed(12345, 0) == 12345
    seeds = {distributed.episode_seed(12345, r) for r in range(4)}
    assert len(seeds) == 4


def test_batches_split_the_global_batch_disjointly():
    import numpy as np

    tokens = np.arange(2000, dtype=np.int64)
    whole = TokenBatches(tokens, 4, 8, seed=3)
    parts = [TokenBatches(tokens, 4, 8, seed=3, rank=r, world=2) for r in range(2)]
    for _ in range(70):  # past an epoch boundary (249 windows)
        full = whole.next()
        halves = [p.next() for p in parts]
        assert torch.equal(halves[0], full[0::2]) and torch.equal(halves[1], full[1::2])
    assert all(p.state_dict() == whole.state_dict() for p in parts)
    with pytest.raises(ValueError, match="batch_size=3"):
        TokenBatches(tokens, 3, 8, seed=3, rank=0, world=2)


def test_forward_hidden_mode_matches_hidden():
    from metapretrain.model.decoder import Decoder

    model = Decoder(tiny_model_config(64))
    x = torch.randint(0, 64, (2, 8))
    assert torch.equal(model(x, output="hidden"), model.hidden(x))
    assert torch.equal(model(x), model.lm_logits(model.hidden(x)))
    with pytest.raises(ValueError, match="output="):
        model(x, output="nope")


# ------------------------------------------------------------ multi-process

@pytest.mark.slow
def test_collectives_agree_and_a_rank0_failure_reaches_every_rank(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "seen"
    mp.spawn(_primitives, args=(2, free_port(), str(out)), nprocs=2)
    seen = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(2)]
    for rank, got in enumerate(seen):
        assert got["any"] is True and got["none"] is False
        assert got["scalars"] == [[30.0], [0.5, 4.0]]
        assert got["value"] == ("from rank 0" if rank == 0 else None)
    assert seen[0]["error"] == "OSError: disk full"  # rank 0 raises its own error
    assert seen[1]["error"] == "RuntimeError: rank 0 failed to write a checkpoint: OSError: disk full"


def resume_copy(run: Path, dest: Path, step: int) -> Path:
    """A copy of a finished run cut back to its checkpoint `step` (later checkpoints and done.json removed)."""
    shutil.copytree(run, dest)
    (paths.pretrain_dir(dest) / "done.json").unlink()
    for info in ckpt.list_checkpoints(dest):
        if info.step > step:
            shutil.rmtree(info.path)
    return dest


def train_losses(run: Path) -> list[float]:
    return [r["loss"] for r in records(run, "train")]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_and_checkpoints_resume_at_world_size_1_and_2(strategy, tokenized_dir, tmp_path,
                                                                          monkeypatch, capfd):
    """2 ranks x batch 2 == 1 rank x batch 4 (loss curve, eval, final weights); the 2-rank checkpoint of step 2
    resumes on 1 rank (consolidated files) and on 2 ranks (FSDP: the torch.distributed.checkpoint shards in
    dcp/) and reaches the same end."""
    from metapretrain.train.stage import train_run

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ref = make_run(tmp_path, "ref", strategy=strategy)
    train_run(str(ref), str(tokenized_dir))
    two = make_run(tmp_path, "two", strategy=strategy)
    spawn(2, "train", two, tokenized_dir)

    ref_train = records(ref, "train")
    two_train = records(two, "train")
    assert [r["step"] for r in two_train] == list(range(1, 7))  # rank 0 alone wrote metrics
    for a, b in zip(ref_train, two_train, strict=True):
        assert a["tokens"] == b["tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    ref_eval = [r["val_loss"] for r in records(ref, "eval")]
    two_eval = [r["val_loss"] for r in records(two, "eval")]
    assert two_eval == pytest.approx(ref_eval, rel=1e-5)
    assert_weights_close(final_weights(two), final_weights(ref))
    assert json.loads((paths.pretrain_dir(two) / "done.json").read_text())["final_step"] == 6

    for info in ckpt.list_checkpoints(two):
        manifest = ckpt.verify_checkpoint(info.path)  # the shards are in the manifest and verify
        shards = sorted(n for n in manifest["files"] if n.startswith(f"{ckpt.DCP_DIR}/"))
        if strategy == "fsdp":  # one file per rank and the metadata
            assert shards == ["dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp"], manifest["files"]
        else:
            assert shards == [] and not (info.path / ckpt.DCP_DIR).exists()
    assert ckpt.has_sharded(ckpt.final_checkpoint(two).path) == (strategy == "fsdp")
    assert not list(paths.checkpoints_dir(two).glob(".*"))  # no temporary directory left behind

    capfd.readouterr()
    one = resume_copy(two, tmp_path / "resume1", step=2)
    train_run(str(one), str(tokenized_dir))
    assert "resuming from step_00000002 (step 2, 256 tokens)\n" in capfd.readouterr().out  # consolidated files
    again = resume_copy(two, tmp_path / "resume2", step=2)
    spawn(2, "train", again, tokenized_dir)
    resumed_from = "256 tokens, shards of dcp/)" if strategy == "fsdp" else "256 tokens)"
    assert f"resuming from step_00000002 (step 2, {resumed_from}" in capfd.readouterr().out
    for resumed in (one, again):
        assert train_losses(resumed) == pytest.approx(train_losses(ref), rel=1e-5)
        assert_weights_close(final_weights(resumed), final_weights(ref))


@pytest.mark.slow
def test_meta_steps_stay_in_sync_under_ddp_and_fsdp(tokenized_dir, tmp_path):
    """FOMAML hybrid (rho 0.5) on 2 ranks with per-rank episodes: after every update the ranks' gradients and
    weights are identical; DDP (hook + explicit all-reduce) and FSDP2 (reduce-scatter) give the same run."""
    steps = 5
    results = {}
    for strategy in ("ddp", "fsdp"):
        run = make_run(tmp_path, strategy, meta=META, strategy=strategy)
        out = tmp_path / f"{strategy}.pt"
        spawn(2, "check", run, tokenized_dir, out, steps)
        results[strategy] = torch.load(out, weights_only=True)
    ddp, fsdp = results["ddp"], results["fsdp"]
    assert ddp["diffs"] == {"grad": 0.0, "weight": 0.0}
    assert fsdp["diffs"]["grad"] == 0.0  # the episode head is replicated under FSDP too
    kinds = [(r["n_next_token"], r["n_meta"]) for r in ddp["records"]]
    assert sum(m for _, m in kinds) > 0 and sum(n for n, _ in kinds) > 0, kinds
    for a, b in zip(ddp["records"], fsdp["records"], strict=True):
        assert (a["n_next_token"], a["n_meta"]) == (b["n_next_token"], b["n_meta"])
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        if "loss" in a:
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        if "meta/query_loss" in a:
            assert b["meta/query_loss"] == pytest.approx(a["meta/query_loss"], rel=1e-5)
    assert_weights_close(fsdp["weights"], ddp["weights"])
    assert_weights_close(fsdp["head"], ddp["head"])


@pytest.mark.slow
def test_two_task_submitit_job_trains_like_one_process(tokenized_dir, tmp_path, monkeypatch):
    """A 2-task job of submitit's local cluster (what a SLURM job with tasks_per_node 2 runs): every task runs
    StageJob; the ranks come from submitit's TorchDistributedEnvironment; rank 0 alone writes the outputs."""
    import submitit

    from metapretrain.launch.stage_job import StageJob
    from metapretrain.train.stage import train_run

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    ref = make_run(tmp_path, "ref")
    train_run(str(ref), str(tokenized_dir))
    run = make_run(tmp_path, "job")
    log = tmp_path / "job.log"
    job = StageJob(stage="pretrain", run_dir=str(run), log=str(log), target="metapretrain.train.stage:train_run",
                   kwargs={"run_dir": str(run), "data_dir": str(tokenized_dir)}, launcher="local", max_requeues=0,
                   grace_s=30.0, cwd=str(tmp_path), cuda_visible_devices=None)
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local")
    executor.update_parameters(tasks_per_node=2, timeout_min=5)
    results = executor.submit(job).results()
    assert [r["final_step"] for r in results] == [6, 6]
    text = log.read_text()
    assert "rank 0 of 2 (ddp, submitit)" in text and "rank 1 of 2 (ddp, submitit)" in text
    assert train_losses(run) == pytest.approx(train_losses(ref), rel=1e-5)
    assert_weights_close(final_weights(run), final_weights(ref))


@pytest.mark.slow
def test_reptile_grads_written_outside_autograd_are_synchronised_by_ddp(tokenized_dir, tmp_path):
    """Reptile writes .grad directly (no backward), for the whole backbone with scope all; DDP's bucketed
    all-reduce (final micro-step next-token) and the explicit one (final micro-step meta) both average them."""
    meta = {**META, "learner": "reptile", "reptile": {"scope": "all"}}
    run = make_run(tmp_path, "reptile", meta=meta, strategy="ddp")
    out = tmp_path / "reptile.pt"
    spawn(2, "check", run, tokenized_dir, out, 5)
    got = torch.load(out, weights_only=True)
    assert got["diffs"] == {"grad": 0.0, "weight": 0.0}
    assert sum(r["n_meta"] for r in got["records"]) > 0


@pytest.mark.slow
def test_fsdp_shards_resume_at_another_world_size_and_with_meta_modules(tokenized_dir, tmp_path, capfd):
    """The dcp/ shards written by 2 FSDP ranks are resharded for 4 ranks (same losses as the uninterrupted run:
    the global batch is the same); a FOMAML run resumes from its shards (episode head and its optimizer state
    included) exactly where it stopped."""
    two = make_run(tmp_path, "two", strategy="fsdp")
    spawn(2, "train", two, tokenized_dir)
    four = resume_copy(two, tmp_path / "four", step=2)
    capfd.readouterr()
    spawn(4, "train", four, tokenized_dir)
    assert "(step 2, 256 tokens, shards of dcp/)" in capfd.readouterr().out
    assert train_losses(four) == pytest.approx(train_losses(two), rel=1e-5)
    assert_weights_close(final_weights(four), final_weights(two))
    assert ckpt.verify_checkpoint(ckpt.final_checkpoint(four).path)["files"].keys() >= {
        f"dcp/__{r}_0.distcp" for r in range(4)}

    meta = make_run(tmp_path, "meta", meta=META, strategy="fsdp")
    spawn(2, "train", meta, tokenized_dir)
    again = resume_copy(meta, tmp_path / "meta-again", step=2)
    capfd.readouterr()
    spawn(2, "train", again, tokenized_dir)
    assert "shards of dcp/)" in capfd.readouterr().out
    def curve(run: Path) -> list[float]:  # an update of meta steps only logs no next-token loss
        train = records(run, "train")
        return [r.get("loss", r.get("meta/query_loss")) for r in train] + [r["grad_norm"] for r in train]

    assert sum(r["n_meta"] for r in records(meta, "train")) > 0
    assert curve(again) == pytest.approx(curve(meta), rel=1e-5)
    assert_weights_close(final_weights(again), final_weights(meta))
    assert_weights_close(ckpt.load_modules(ckpt.final_checkpoint(again).path)["episode_head"],
                         ckpt.load_modules(ckpt.final_checkpoint(meta).path)["episode_head"])
