"""Resume: the run's saved settings are the truth, a changed model is refused before anything in
the run folder changes, and metrics.jsonl never logs a step twice."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from catalogclip.cli import app
from catalogclip.train.config import OptimConfig, RunConfig
from catalogclip.train.plan import make_plan
from catalogclip.train.trainer import train

runner = CliRunner()


class Killed(Exception):
    pass


def _train(*args: str):
    return runner.invoke(app, ["train", "--no-progress", *args])


def _metric_steps(run) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _snapshot(run) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture()
def stopped_run(brand_catalog, tmp_path):
    """An eiclip run (10 steps planned) stopped after 4 steps with a checkpoint."""
    run = tmp_path / "run"
    result = _train(
        "--catalog", str(brand_catalog), "--method", "eiclip", "--backbone", "tiny", "--entities", "brand,season",
        "--epochs", "5", "--batch-size", "16", "--max-steps", "4", "--out", str(run),
        "--set", "optim.log_every=1", "--set", "data.test_fraction=0.05",
    )
    assert result.exit_code == 0, result.output
    assert "plan: 5 epochs x 2 batches of 16 = 10 steps over 30 pairs; stopping at step 4" in result.output
    return run


def test_resume_needs_no_other_flag_and_never_repeats_a_step(stopped_run):
    result = _train("--out", str(stopped_run), "--resume", "--max-steps", "7")
    assert result.exit_code == 0, result.output
    assert "trained eiclip for 7 steps" in result.output
    result = _train("--out", str(stopped_run), "--resume")  # no catalog, no method: the run's own
    assert result.exit_code == 0, result.output
    assert "trained eiclip for 10 steps" in result.output
    assert _metric_steps(stopped_run) == list(range(1, 11))
    saved = RunConfig.load(stopped_run / "config.yaml")
    assert saved.method_options["entity_groups"] == ["brand", "season"] and saved.optim.max_steps is None


@pytest.mark.parametrize(
    "flags, differences",
    [
        (["--entities", "brand"], ["method_options.entity_groups: ['brand', 'season'] -> ['brand']"]),
        (["--batch-size", "8", "--lr", "0.5"], ["optim.batch_size: 16 -> 8", "optim.lr: 5e-05 -> 0.5"]),
        (["--epochs", "9"], ["optim.epochs: 5 -> 9"]),
    ],
)
def test_resume_with_changed_settings_is_refused_and_leaves_the_run_untouched(stopped_run, flags, differences):
    before = _snapshot(stopped_run)
    result = _train("--out", str(stopped_run), "--resume", *flags)
    assert result.exit_code == 2
    assert "cannot resume with other settings than the run's" in result.output
    for line in differences:
        assert line in result.output
    assert "Traceback" not in result.output
    assert _snapshot(stopped_run) == before
    embedded = runner.invoke(app, ["embed", "--run", str(stopped_run)])
    assert embedded.exit_code == 0, embedded.output


def test_a_run_killed_before_its_first_checkpoint_restarts_without_repeated_steps(brand_catalog, tmp_path):
    from test_trainer import tiny_run

    config = tiny_run(brand_catalog, "clip", epochs=5)
    config.optim.log_every = 1

    def kill_at_step_3(step, record):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        train(config, tmp_path / "run", on_step=kill_at_step_3, progress=False)
    assert _metric_steps(tmp_path / "run") == [1, 2, 3]
    assert not (tmp_path / "run" / "checkpoints").exists()
    result = train(config, tmp_path / "run", resume=True, progress=False)
    assert _metric_steps(tmp_path / "run") == list(range(1, result.steps + 1))


def test_plan_takes_whole_epochs_from_the_step_budget():
    small = make_plan(OptimConfig(step_budget=2000, max_epochs=100), batches_per_epoch=19, pairs=1200)
    assert (small.epochs, small.steps, small.stop, small.from_budget) == (100, 1900, 1900, True)  # capped by max_epochs
    large = make_plan(OptimConfig(step_budget=2000), batches_per_epoch=1500, pairs=96_000)
    assert (large.epochs, large.steps) == (2, 3000)
    huge = make_plan(OptimConfig(step_budget=2000), batches_per_epoch=4700, pairs=300_000)
    assert (huge.epochs, huge.steps) == (1, 4700)  # at least one pass over the data
    default = make_plan(OptimConfig(), batches_per_epoch=13, pairs=800)
    assert (default.epochs, default.steps) == (40, 520)
    given = make_plan(OptimConfig(epochs=3, max_steps=10, grad_accum=2), batches_per_epoch=40, pairs=2560)
    assert (given.epochs, given.steps, given.stop, given.from_budget) == (3, 60, 10, False)
    assert str(given) == "plan: 3 epochs x 40 batches of 64 = 60 steps over 2,560 pairs; stopping at step 10"
