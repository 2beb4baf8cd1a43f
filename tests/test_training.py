"""fit(): learns, is reproducible, reports every epoch, accumulates gradients correctly."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from mnist_addition.core.backends import resolve_mixed_precision
from mnist_addition.core.config import ConfigError, TrainConfig
from mnist_addition.core.errors import Interrupted
from mnist_addition.training.loop import fit

from .helpers import tiny_config


@pytest.fixture(scope="module")
def trained(mnist_dir):
    # on the CPU explicitly: the reproducibility tests below hold there without --deterministic
    rows = []
    final = fit(tiny_config(mnist_dir, cpu=True), report=rows.append, progress=False)
    return final, rows


def test_learns_well_above_chance(trained):
    final, _ = trained
    # chance is 10% (digit) and at most ~10% (sum); the glyphs are easy, so this is a clear margin
    assert final["val"]["digit_acc"] > 0.8 and final["test"]["digit_acc"] > 0.8
    assert final["val"]["sum_acc"] > 0.6 and final["test"]["sum_acc"] > 0.6


def test_reports_once_per_epoch_with_both_accuracies(trained):
    _, rows = trained
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for key in ("train_loss", "val_loss", "val_digit_acc", "val_sum_acc", "val_both_acc", "images_per_s"):
        assert all(key in r for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_same_config_and_seed_give_identical_metrics(mnist_dir, trained):
    final, rows = trained
    again = fit(tiny_config(mnist_dir, cpu=True), progress=False)
    assert again["test"] == final["test"] and again["val"] == final["val"]
    assert [r["train_loss"] for r in again["history"]] == [r["train_loss"] for r in rows]


def test_another_seed_gives_another_model(mnist_dir, trained):
    final, rows = trained
    other = fit(tiny_config(mnist_dir, cpu=True, seed=1), progress=False)  # the same config but the seed
    assert [r["train_loss"] for r in other["history"]] != [r["train_loss"] for r in rows]
    assert other["val"]["loss"] != final["val"]["loss"]


def test_cpu_flag_trains_on_the_cpu_and_config_records_it(trained):
    final, _ = trained
    setup = final["setup"]
    assert setup["num_processes"] == 1 and setup["device"] == "cpu" and setup["device_name"] == "cpu"
    assert setup["deterministic"] is False and setup["compile"] is False and setup["matmul_precision"] == "fp32"


def test_cpu_is_chosen_by_flag_by_accelerate_launch_or_by_having_no_gpu(monkeypatch):
    from mnist_addition.core import backends

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # pretend this machine has a GPU
    assert not backends.use_cpu(False)
    assert backends.use_cpu(True)
    for value, expected in (("1", True), ("true", True), ("True", True), ("False", False), ("0", False)):
        monkeypatch.setenv("ACCELERATE_USE_CPU", value)  # what `accelerate launch` writes for use_cpu
        assert backends.use_cpu(False) is expected, value
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert backends.use_cpu(False)


def test_seed_preset_trains_through_the_same_loop(mnist_dir):
    final = fit(tiny_config(mnist_dir, preset="seed", width=32, epochs=1, optimizer="sgd", train_limit=64,
                            batch_size=32), progress=False)
    row = final["history"][0]  # the seed recipe held: SGD at a constant 0.01, a finite loss
    assert final["params"] == 6_384_925 and row["lr"] == pytest.approx(0.01) and math.isfinite(row["train_loss"])
    assert final["test"]["n"] == 200 and final["setup"]["mixed_precision"] == "no"


def test_the_stride_stem_trains_learns_and_is_recorded(mnist_dir, trained, tmp_path):
    run_dir = tmp_path / "run"
    final = fit(tiny_config(mnist_dir, cpu=True, stem="stride", output_dir=str(run_dir)), progress=False)
    assert final["params"] == trained[0]["params"]  # the same weights' shapes as the pool stem
    assert final["val"]["digit_acc"] > 0.8
    assert json.loads((run_dir / "config.json").read_text())["config"]["stem"] == "stride"
    weights = load_file(str(run_dir / "model.safetensors"))
    assert weights["features.3.weight"].shape == (16, 8, 3, 3)  # the second conv follows at once: no pooling layer


def test_a_cropped_net_trains_learns_and_is_recorded(mnist_dir, trained, tmp_path):
    run_dir = tmp_path / "run"
    final = fit(tiny_config(mnist_dir, cpu=True, crop=3, output_dir=str(run_dir)), progress=False)
    assert final["params"] < trained[0]["params"]  # the 2x2 map: a smaller classifier
    assert final["val"]["digit_acc"] > 0.8
    assert json.loads((run_dir / "config.json").read_text())["config"]["crop"] == 3
    assert load_file(str(run_dir / "model.safetensors"))["classifier.weight"].shape == (10, 4 * 8 * 2 * 2)


def test_a_deeper_net_trains_learns_and_loads_back(mnist_dir, trained, tmp_path):
    from mnist_addition.rundir.contents import load_run

    run_dir = tmp_path / "run"
    final = fit(tiny_config(mnist_dir, cpu=True, depth=6, output_dir=str(run_dir)), progress=False)
    assert final["params"] == trained[0]["params"] + 9 * 16 * 16 + 2 * 16 + 9 * 32 * 32 + 2 * 32  # two conv-BNs
    assert final["val"]["digit_acc"] > 0.8
    assert json.loads((run_dir / "config.json").read_text())["config"]["depth"] == 6
    model = load_run(run_dir).model  # evaluate, predict and export rebuild the same depth
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.features) == 6


def test_a_refit_without_validation_trains_on_every_image_and_resumes_bit_identically(mnist_dir, tmp_path):
    """--val-size 0: the final fit of a recipe chosen on validation, on the whole training file. No
    validation metrics anywhere (rows, final), the test set still scored, and its checkpoints (a
    history without validation keys) resume to the same numbers as a run never stopped."""
    from mnist_addition.rundir.checkpoint import list_checkpoints, read_state

    config = tiny_config(mnist_dir, cpu=True, val_size=0, epochs=2)
    whole = fit(config.replace(output_dir=str(tmp_path / "whole")), progress=False)
    assert whole["val"] is None and whole["test"]["n"] == 200 and whole["test"]["digit_acc"] > 0.6
    assert whole["setup"]["train_samples_per_process"] == [2 * (600 // 32 * 32)]  # full batches of all 600 images
    assert all(not any(k.startswith("val_") for k in row) for row in whole["history"])
    assert (tmp_path / "whole" / "curves.png").is_file()

    def stop_after_epoch_1(row):
        raise KeyboardInterrupt

    run = tmp_path / "stopped"
    with pytest.raises(Interrupted):
        fit(config.replace(output_dir=str(run)), stop_after_epoch_1, progress=False)
    assert [len(read_state(p)["history"]) for p in list_checkpoints(run)][-1] == 1
    resumed = fit(config.replace(output_dir=str(run)), progress=False, start="resume")
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in whole["history"]]
    assert resumed["test"] == whole["test"]


def test_tta_changes_evaluation_only_and_is_recorded(mnist_dir, trained, tmp_path):
    from mnist_addition.rundir.contents import load_run

    run_dir = tmp_path / "run"
    final = fit(tiny_config(mnist_dir, cpu=True, tta=9, output_dir=str(run_dir)), progress=False)
    plain = trained[0]
    # the same training to the bit (tta acts in evaluation only), scored with nine views of each image
    assert [row["train_loss"] for row in final["history"]] == [row["train_loss"] for row in plain["history"]]
    assert final["val"]["digit_acc"] > 0.8
    assert final["val"]["loss"] != plain["val"]["loss"]  # mean log-probabilities of the views, not one image's
    assert json.loads((run_dir / "config.json").read_text())["config"]["tta"] == 9
    assert load_run(run_dir).model.tta == 9  # evaluate and predict load it with its views


def test_ema_evaluates_and_saves_the_weights_average_and_resumes_bit_identically(mnist_dir, trained, tmp_path):
    """--ema: the same training to the bit (the optimizer never steps the average), but validation,
    test and model.safetensors are the moving average's; each checkpoint holds the model's weights and
    the average, and a run stopped after epoch 1 resumes to the same average as one never stopped."""
    from mnist_addition.rundir.checkpoint import list_checkpoints
    from mnist_addition.rundir.contents import load_run
    from mnist_addition.rundir.names import EMA_FILE, MODEL_FILE

    plain = trained[0]
    config = tiny_config(mnist_dir, cpu=True, ema=0.9)
    whole = fit(config.replace(output_dir=str(tmp_path / "whole")), progress=False)
    assert [row["train_loss"] for row in whole["history"]] == [row["train_loss"] for row in plain["history"]]
    assert whole["val"] != plain["val"] and whole["test"] != plain["test"] and whole["val"]["digit_acc"] > 0.8
    last = list_checkpoints(tmp_path / "whole")[-1]
    model, average = load_file(str(last / MODEL_FILE)), load_file(str(last / EMA_FILE))
    shipped = load_file(str(tmp_path / "whole" / "model.safetensors"))
    assert all(torch.equal(shipped[k], average[k]) for k in average)
    assert not all(torch.equal(model[k], average[k]) for k in average)
    assert load_run(tmp_path / "whole").config.ema == 0.9

    def stop_after_epoch_1(row):
        raise KeyboardInterrupt

    run = tmp_path / "stopped"
    with pytest.raises(Interrupted):
        fit(config.replace(output_dir=str(run)), stop_after_epoch_1, progress=False)
    resumed = fit(config.replace(output_dir=str(run)), progress=False, start="resume")
    assert resumed["val"] == whole["val"] and resumed["test"] == whole["test"]
    again = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(again[k], shipped[k]) for k in shipped)


def test_a_checkpoint_without_the_average_is_not_resumed_with_ema(mnist_dir, tmp_path):
    """A checkpoint of an --ema run whose ema.safetensors is gone (its manifest rewritten to match)
    cannot be resumed: the average would restart from the weights, not continue."""
    from mnist_addition.rundir.checkpoint import CheckpointError, list_checkpoints
    from mnist_addition.rundir.names import EMA_FILE, MANIFEST

    def stop_after_epoch_1(row):
        raise KeyboardInterrupt

    config = tiny_config(mnist_dir, cpu=True, epochs=2, ema=0.9, output_dir=str(tmp_path / "run"))
    with pytest.raises(Interrupted):
        fit(config, stop_after_epoch_1, progress=False)
    (last,) = list_checkpoints(tmp_path / "run")
    (last / EMA_FILE).unlink()
    manifest = json.loads((last / MANIFEST).read_text())
    del manifest[EMA_FILE]
    (last / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="has no ema.safetensors"):
        fit(config, progress=False, start="resume")


def test_the_average_ramps_up_and_moves_towards_the_weights():
    from mnist_addition.core.average import WeightAverage, decay_at

    assert decay_at(0.999, 1) == 2 / 11 and decay_at(0.999, 10_000) == 0.999
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model(torch.randn(4, 2))  # BatchNorm statistics and its step count move too
    for updates in (1, 100):
        average.update(updates)
    d1, d100 = decay_at(0.5, 1), decay_at(0.5, 100)
    now = model.state_dict()
    for key, value in average.state_dict().items():
        if value.is_floating_point():
            once = before[key] + (1 - d1) * (now[key] - before[key])
            torch.testing.assert_close(value, once + (1 - d100) * (now[key] - once))
        else:
            assert torch.equal(value, now[key])
    assert not any(p.requires_grad for p in average.module.parameters()) and not average.module.training


def test_gradient_accumulation_matches_one_big_batch(mnist_dir):
    """K micro-batches of B/K accumulate to the update of one batch of B (fp32).

    BatchNorm normalises over the batch it sees, so the check uses the seed network (no BatchNorm).
    Tolerance 1e-5: the same sums in a different order, in float32.
    """
    common = dict(preset="seed", width=32, epochs=1, optimizer="sgd", schedule="constant", train_limit=64,
                  batch_size=32, weight_decay=0.0, shift=0, cpu=True)  # fp32 maths (a GPU would use TF32)
    one = fit(tiny_config(mnist_dir, **common), progress=False)
    acc = fit(tiny_config(mnist_dir, **common, gradient_accumulation_steps=4), progress=False)
    assert acc["history"][0]["train_loss"] == pytest.approx(one["history"][0]["train_loss"], rel=1e-5)
    assert acc["val"]["loss"] == pytest.approx(one["val"]["loss"], rel=1e-5)


def test_batch_larger_than_the_training_set(mnist_dir):
    with pytest.raises(ConfigError, match="larger than the 500 training images"):
        fit(tiny_config(mnist_dir, batch_size=1024), progress=False)


def test_explicit_precision_is_kept():
    assert [resolve_mixed_precision(p, cuda) for p in ("no", "bf16", "fp16") for cuda in (False, True)] == \
        ["no", "no", "bf16", "bf16", "fp16", "fp16"]


@pytest.mark.parametrize("emulated_only,expected", [(True, "no"), (False, "bf16")])
def test_auto_precision_on_a_gpu_picks_bf16_only_where_it_is_native(monkeypatch, emulated_only, expected):
    asked = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return including_emulation if emulated_only else True  # a T4/V100 emulates; an A100/H100 is native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert resolve_mixed_precision("auto", cuda=True) == expected
    assert asked == [False]


@pytest.mark.parametrize("amx,avx512_bf16,expected", [(True, False, "bf16"), (False, True, "bf16"), (False, False, "no")])
def test_auto_precision_on_the_cpu_follows_its_bf16_instructions(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert resolve_mixed_precision("auto", cuda=False) == expected


def test_default_auto_precision_trains_and_records_what_it_chose(mnist_dir):
    """The default path (every other test forces fp32): whatever 'auto' resolves to here, training
    uses it, records it, and still learns."""
    final = fit(tiny_config(mnist_dir, cpu=True, mixed_precision="auto"), progress=False)
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()  # this CPU, asked directly
    assert final["setup"]["mixed_precision"] == ("bf16" if native else "no")
    assert final["val"]["digit_acc"] > 0.8 and final["test"]["sum_acc"] > 0.6


def test_limits_apply_to_data_passed_in(mnist_dir):
    from mnist_addition.core.data import load_mnist, make_splits

    data = make_splits(load_mnist(mnist_dir, download=False), val_size=100)
    final = fit(tiny_config(mnist_dir, epochs=1, train_limit=64, eval_limit=50), data=data, progress=False)
    assert final["setup"]["train_samples_per_process"] == [64] and final["test"]["n"] == 50


def test_test_every_epoch_reports_the_final_test_metrics(mnist_dir):
    final = fit(tiny_config(mnist_dir, epochs=2), progress=False, test="every_epoch")
    last = final["history"][-1]
    assert [r["epoch"] for r in final["history"]] == [1, 2]
    assert final["test"]["digit_acc"] == last["test_digit_acc"] and final["test"]["n"] == last["test_n"] == 200


@pytest.mark.parametrize("total,warmup", [(430, 0.2), (64, 0.3), (7, 0.2), (12, 0.5)])
def test_lr_schedule_is_torchs_onecycle_step_for_step(total, warmup):
    """The learning rate is a pure function of the step (nothing to checkpoint), and the same floats
    as the OneCycleLR scheduler it replaced: the CPU's results did not move."""
    from mnist_addition.training.step import lr_schedule

    config = TrainConfig.from_preset("fast", lr=0.008, warmup=warmup)
    lr_at = lr_schedule(config, total)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=config.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total, pct_start=warmup,
                                                    cycle_momentum=False, div_factor=25.0, final_div_factor=1e3)
    ours = [lr_at(step) for step in range(total)]
    theirs = []
    for _ in range(total):
        theirs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert ours == theirs
    assert lr_schedule(config.replace(schedule="constant"), total)(total // 2) == config.lr


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_non_finite_hyperparameters_are_refused(value):
    with pytest.raises(ConfigError, match="--lr must be a finite number"):
        TrainConfig.from_preset("fast", lr=float(value))
    with pytest.raises(ConfigError, match="--sum-weight must be a finite number"):
        TrainConfig.from_dict({"sum_weight": float(value)})


def test_a_diverging_run_stops_keeps_its_last_good_checkpoint_and_saves_no_weights(mnist_dir, tmp_path, monkeypatch):
    """The loss turns NaN in epoch 2 (a NaN learning rate from global step 21, epoch 2 step 6, on):
    training stops at the next check (the checkpoint due at epoch 2 step 9) with one message, the
    checkpoints written before it stay, none after it, and no model.safetensors appears."""
    import mnist_addition.training.step as step
    from mnist_addition.rundir.checkpoint import list_checkpoints, read_state
    from mnist_addition.training.checkpointer import TrainingDiverged

    real = step.lr_schedule

    def poisoned(config, total):
        lr = real(config, total)
        return lambda step: float("nan") if step >= 20 else lr(step)

    monkeypatch.setattr(step, "lr_schedule", poisoned)
    run = tmp_path / "run"
    run.mkdir()
    config = tiny_config(mnist_dir, cpu=True, output_dir=str(run), checkpoint_every=4, keep_checkpoints=10)
    with pytest.raises(TrainingDiverged, match=r"epoch 2 between steps 5 and 9 of 15.*lower --lr.*"
                                            r"step-00000020, is kept; no weights were saved"):
        fit(config, progress=False)
    assert [p.name for p in list_checkpoints(run)][-3:] == ["step-00000015", "step-00000016", "step-00000020"]
    assert all(torch.isfinite(torch.tensor(read_state(p)["loss_sum"])) for p in list_checkpoints(run))
    assert not (run / "model.safetensors").exists()


def test_train_state_knows_its_global_step_and_round_trips_through_its_state_dict():
    from mnist_addition.rundir.checkpoint import SAVED_FIELDS
    from mnist_addition.training.state import TrainState

    state = TrainState(steps=15, epoch=3, step=4, loss_sum=1.5, train_seconds=2.0, samples_per_process=512,
                       history=[{"epoch": 1}, {"epoch": 2}])
    assert state.global_step == 2 * 15 + 4
    saved = state.state_dict({"preset": "fast", "width": 8, "world": 2, "schedule": []})
    assert set(saved) == set(SAVED_FIELDS) and saved["global_step"] == 34
    again = TrainState.from_saved(saved, steps=15, world=1)  # one process takes over two processes' images
    assert (again.epoch, again.step, again.global_step, again.samples_per_process) == (3, 4, 34, 1024)
    again.advance(32)
    assert (again.step, again.samples_per_process) == (5, 1056)
    again.next_epoch()
    assert (again.epoch, again.step, again.loss_sum, again.global_step) == (4, 0, 0.0, 45)


@pytest.mark.parametrize("every,run_dir,due", [
    (4, "run", [4, 8, 12, 16, 20, 24, 28]),  # global steps; not 15 or 30: epoch ends save anyway
    (0, "run", []),
    (4, None, []),  # no run folder, no checkpoints
])
def test_the_checkpointer_owns_the_interval(every, run_dir, due):
    from types import SimpleNamespace

    from mnist_addition.training.checkpointer import Checkpointer
    from mnist_addition.training.state import TrainState

    run = SimpleNamespace(config=SimpleNamespace(checkpoint_every=every), run_dir=run_dir)
    checkpointer = Checkpointer(run, folder=None)
    state, seen = TrainState(steps=15), []
    while state.epoch <= 2:
        for _ in range(15):
            state.advance(32)
            if checkpointer.due(state):
                seen.append(state.global_step)
        state.next_epoch()
    assert seen == due
