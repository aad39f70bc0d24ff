"""Settings that reach the model: towers, task weights, task weighting, torch threads.

Each is read from a flag of ``recstream worker`` (and ``recstream demo``) or
from its environment variable, flags winning, and must change the learner the
worker builds, not only a field of :class:`~streams.settings.Settings`.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from online_models.config import MultiTaskConfig
from online_models.learner import mtl
from online_models.synthetic import ToyShop
from online_models.towers import ARCHITECTURES, PLE, MMoE, SharedBottom
from streams.cli import build_parser, main
from streams.demo import model_flags
from streams.settings import TASK_WEIGHTINGS, TOWERS, Settings

TOWER_TYPES = {"shared_bottom": SharedBottom, "mmoe": MMoE, "ple": PLE}
TOWER_KEYS = {  # state-dict keys only each architecture has
    "shared_bottom": "towers.bottom.",
    "mmoe": "towers.gate_layer.",
    "ple": "towers.layers.",
}


def settings_of(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    """What ``recstream ARGV`` runs with under ``env``, as :func:`streams.cli.main` reads it."""
    return Settings.from_env(env or {}).with_args(build_parser().parse_args(argv))


def learner_of(settings: Settings):
    """The worker's learner for these settings, with small tables."""
    return mtl(settings.model_config().with_capacity(4096))


def test_tower_choices_are_the_learners_architectures():
    assert TOWERS == ARCHITECTURES
    assert TASK_WEIGHTINGS == ("fixed", "uncertainty")


def test_the_defaults_build_the_worker_model_it_had_before():
    settings = settings_of(["worker"])
    assert (settings.towers, settings.task_weights) == ("shared_bottom", (1.0, 1.0, 1.0))
    assert (settings.task_weighting, settings.torch_threads) == ("fixed", 1)
    assert settings.model_config() == MultiTaskConfig(num_threads=1)  # what it hard-wired


@pytest.mark.parametrize("towers", ["mmoe", "ple"])
@pytest.mark.parametrize("source", ["flag", "env"])
def test_towers_from_flag_or_env_change_the_net(towers, source):
    if source == "flag":
        settings = settings_of(["worker", "--towers", towers])
    else:
        settings = settings_of(["worker"], {"RECSTREAM_TOWERS": towers})
    assert settings.model_config().architecture == towers
    net = learner_of(settings).net
    assert isinstance(net.towers, TOWER_TYPES[towers])
    keys = set(net.state_dict())
    for name, prefix in TOWER_KEYS.items():
        assert any(k.startswith(prefix) for k in keys) == (name == towers), name


def test_flags_win_over_the_environment():
    env = {
        "RECSTREAM_TOWERS": "mmoe",
        "RECSTREAM_TASK_WEIGHTS": "1,1,1",
        "RECSTREAM_TASK_WEIGHTING": "uncertainty",
        "RECSTREAM_TORCH_THREADS": "3",
    }
    from_env = settings_of(["worker"], env)
    assert (from_env.towers, from_env.task_weighting, from_env.torch_threads) == (
        "mmoe",
        "uncertainty",
        3,
    )
    argv = ["worker", "--towers", "ple", "--task-weights", "2,0.5,0"]
    argv += ["--task-weighting", "fixed", "--torch-threads", "2"]
    config = settings_of(argv, env).model_config()
    assert config.architecture == "ple" and config.task_weights == (2.0, 0.5, 0.0)
    assert config.task_weighting == "fixed" and config.num_threads == 2
    assert isinstance(mtl(replace(config, num_threads=1).with_capacity(256)).net.towers, PLE)


def test_the_demo_takes_the_model_flags_and_hands_them_to_its_worker():
    demo = settings_of(
        ["demo", "--towers", "mmoe", "--task-weights", "1,0,4", "--torch-threads", "2"],
        {"RECSTREAM_TASK_WEIGHTING": "uncertainty"},
    )
    worker = settings_of(["worker", *model_flags(demo)])  # as the demo starts its worker
    assert worker.model_config() == demo.model_config()
    assert worker.model_config().architecture == "mmoe"
    assert worker.task_weights == (1.0, 0.0, 4.0) and worker.task_weighting == "uncertainty"
    assert worker.torch_threads == 2
    odd = replace(demo, task_weights=(0.1, 1 / 3, 1e-7))
    assert settings_of(["worker", *model_flags(odd)]).task_weights == odd.task_weights


@pytest.mark.parametrize("source", ["flag", "env"])
def test_ranking_weights_from_flag_or_env_rank_the_workers_lists(source, tmp_path):
    from streams.service import WorkerService

    if source == "flag":
        settings = settings_of(["worker", "--ranking-weights", "0,0,1,2"])
    else:
        settings = settings_of(["worker"], {"RECSTREAM_RANKING_WEIGHTS": "0,0,1,2"})
    settings = replace(settings, checkpoint_dir=tmp_path, top_k=7)
    ranking = WorkerService(settings).pipeline.ranker.config
    assert (ranking.weights, ranking.value_weight, ranking.top_k) == ((0.0, 0.0, 1.0), 2.0, 7)
    demo = settings_of(["demo", "--ranking-objective", "revenue", "--ranking-weights", "1,0,0,3"])
    worker = settings_of(["worker", *model_flags(demo)])  # as the demo starts its worker
    assert worker.ranking_config() == demo.ranking_config()
    assert worker.ranking_config().objective == "revenue"


def head_rows_changed_by_one_step(settings: Settings) -> set[int]:
    """Rows (tasks) of the logit heads that one learning step of the worker's model moved."""
    learner = learner_of(settings)
    samples, _ = ToyShop(seed=3).stream(512)
    samples = samples[: learner.config.max_batch_size]  # one step
    assert any(s.purchase for s in samples)  # every task has positives
    heads = learner.net.heads
    weight, bias = heads.weight.detach().clone(), heads.bias.detach().clone()
    learner.learn(samples)
    assert learner.model_version == 1
    return {
        t
        for t in range(3)
        if not (torch.equal(weight[t], heads.weight[t]) and torch.equal(bias[t], heads.bias[t]))
    }


@pytest.mark.parametrize("source", ["flag", "env"])
def test_task_weights_from_flag_or_env_weight_the_learners_loss(source):
    def settings(weights: str) -> Settings:
        if source == "flag":
            return settings_of(["worker", "--task-weights", weights])
        return settings_of(["worker"], {"RECSTREAM_TASK_WEIGHTS": weights})

    assert settings("0.5,2,4").model_config().task_weights == (0.5, 2.0, 4.0)
    # The funnel: p_cart = p_click * s(h_cart|click), p_purchase = p_cart * s(...).
    assert head_rows_changed_by_one_step(settings("1,0,0")) == {0}
    assert head_rows_changed_by_one_step(settings("0,1,0")) == {0, 1}
    assert head_rows_changed_by_one_step(settings("0,0,1")) == {0, 1, 2}


def test_the_loss_is_the_task_weighted_sum_of_the_task_losses():
    samples, _ = ToyShop(seed=4).stream(256)
    totals = {}
    for weights in ("1,1,1", "0.5,2,4"):
        learner = learner_of(settings_of(["worker", "--task-weights", weights]))
        batch = learner.encoder.encode(samples, learning=False)
        labels = torch.tensor([s.labels() for s in samples], dtype=torch.float32)
        with torch.no_grad():
            total, per_task = learner.net.loss(learner.net(batch), labels, torch.ones(len(samples)))
        expected = float(torch.tensor(learner.config.task_weights) @ per_task)
        assert total.item() == pytest.approx(expected, rel=1e-6)
        totals[weights] = total.item()
    assert totals["1,1,1"] != pytest.approx(totals["0.5,2,4"])


@pytest.mark.parametrize("source", ["flag", "env"])
def test_uncertainty_weighting_learns_log_variances(source):
    if source == "flag":
        settings = settings_of(["worker", "--task-weighting", "uncertainty"])
    else:
        settings = settings_of(["worker"], {"RECSTREAM_TASK_WEIGHTING": "uncertainty"})
    samples, _ = ToyShop(seed=5).stream(2_048)
    learners = {"uncertainty": learner_of(settings), "fixed": learner_of(settings_of(["worker"]))}
    for learner in learners.values():
        for start in range(0, len(samples), 512):
            learner.learn(samples[start : start + 512])
    moved = learners["uncertainty"].net.task_log_variance.detach()
    assert torch.all(moved != 0) and len(set(moved.tolist())) == 3
    assert torch.equal(learners["fixed"].net.task_log_variance.detach(), torch.zeros(3))


def test_torch_threads_from_flag_or_env():
    assert settings_of(["worker", "--torch-threads", "2"]).model_config().num_threads == 2
    env = {"RECSTREAM_TORCH_THREADS": "4"}
    assert settings_of(["worker"], env).model_config().num_threads == 4


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--towers", "moe", "invalid choice: 'moe'"),
        ("--task-weights", "1,2", "three comma-separated numbers"),
        ("--task-weights", "1,x,2", "three comma-separated numbers"),
        ("--task-weights", "1,-1,2", "finite and non-negative"),
        ("--task-weights", "1,inf,2", "finite and non-negative"),
        ("--task-weights", "nan,1,1", "finite and non-negative"),
        ("--task-weights", "0,0,0", "must not all be zero"),
        ("--task-weighting", "adaptive", "invalid choice: 'adaptive'"),
        ("--torch-threads", "0", "at least 1"),
        ("--torch-threads", "two", "at least 1"),
        ("--ranking-weights", "1,4,16", "four numbers CLICK,CART,PURCHASE,VALUE"),
        ("--ranking-weights", "1,-4,16,0", "non-negative"),
        ("--ranking-weights", "0,0,0,0", "not all 0"),
        ("--ranking-objective", "clicks", "invalid choice: 'clicks'"),
    ],
)
def test_a_bad_flag_is_a_usage_error(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["worker", flag, value])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {flag}" in error and message in error


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("RECSTREAM_TOWERS", "moe", "towers must be one of shared_bottom, mmoe, ple"),
        ("RECSTREAM_TASK_WEIGHTS", "1;1;1", "three comma-separated numbers"),
        ("RECSTREAM_TASK_WEIGHTS", "1,1,1,1", "three comma-separated numbers"),
        ("RECSTREAM_TASK_WEIGHTS", "-1,1,1", "finite and non-negative"),
        ("RECSTREAM_TASK_WEIGHTS", "0,0,0", "must not all be zero"),
        ("RECSTREAM_TASK_WEIGHTING", "adaptive", "must be one of fixed, uncertainty"),
        ("RECSTREAM_TORCH_THREADS", "0", "at least 1"),
        ("RECSTREAM_TORCH_THREADS", "two", "invalid literal"),
        ("RECSTREAM_RANKING_WEIGHTS", "1,4,16,inf", "finite"),
        ("RECSTREAM_RANKING_OBJECTIVE", "clicks", "must be one of weighted, revenue"),
    ],
)
def test_a_bad_environment_variable_is_an_error_naming_it(variable, value, message):
    with pytest.raises(ValueError, match=variable) as error:
        Settings.from_env({variable: value})
    assert message in str(error.value)


def test_the_command_reports_a_bad_environment_variable_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("RECSTREAM_TASK_WEIGHTS", "1,1")
    assert main(["worker"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("recstream worker: error: RECSTREAM_TASK_WEIGHTS='1,1'")
    assert "\n" not in error


def test_settings_built_in_code_are_checked_too():
    with pytest.raises(ValueError, match="towers"):
        Settings(towers="moe")
    with pytest.raises(ValueError, match="all be zero"):
        Settings(task_weights=(0.0, 0.0, 0.0))
    assert Settings(task_weights=[1, 2, 3]).task_weights == (1.0, 2.0, 3.0)


def test_the_worker_service_builds_its_learner_from_the_settings(tmp_path):
    from streams.service import WorkerService

    settings = Settings(
        checkpoint_dir=tmp_path,
        towers="mmoe",
        task_weights=(1.0, 0.0, 2.0),
        task_weighting="uncertainty",
        click_wait_s=5.0,
    )
    pipeline = WorkerService(settings).pipeline
    learner = pipeline.learner
    assert learner.config == replace(settings.model_config(), name="mtl")
    assert pipeline.labels.waits.waits_ms == (5_000, 1_800_000, 1_800_000)
    assert isinstance(learner.net.towers, MMoE)
