"""Transfer to a new shop: what a learner takes from another shop's, and the ways to ask for it."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from online_models import transfer
from online_models.base import Sample
from online_models.config import MultiTaskConfig
from online_models.demand import DEMAND_LR
from online_models.learner import mtl
from online_models.transfer import init_from
from producers.contract import Event, encode_event
from producers.simulator import Shop, ShopConfig
from streams.bench.quality import QualityOptions
from streams.bench.quality import run as run_quality
from streams.checkpoint import CheckpointStore
from streams.cli import main
from streams.pipeline import RawMessage
from streams.service import WorkerService
from streams.settings import Settings

SMALL = MultiTaskConfig().with_capacity(512)
SHOP = ShopConfig(users=300, initial_items=200, new_items=0, events=3_000, drifts=())


def shop_samples(shop: int, events: int = 3_000) -> list[Sample]:
    """Clicked and shown (user, item) pairs of a small simulated shop, as labelled samples."""
    records = Shop(replace(SHOP, shop=shop, events=events)).records()
    shown = [r for r in records if isinstance(r, Event) and r.type in ("impression", "click")]
    clicked = {(e.session_id, e.item_id) for e in shown if e.type == "click"}
    return [
        Sample(
            e.user_id,
            e.item_id,
            ts=e.ts,
            category=e.item.category,
            brand=e.item.brand,
            price=e.item.price,
            device=e.context["device"],
            click=float((e.session_id, e.item_id) in clicked),
        )
        for e in shown
        if e.type == "impression"
    ]


@pytest.fixture(scope="module")
def shop_a_learner():
    learner = mtl(SMALL)
    samples = shop_samples(0)
    for start in range(0, len(samples), 256):
        learner.learn(samples[start : start + 256])
    return learner


def test_a_new_shop_takes_the_shared_layers_and_content_rows_and_no_user_or_item(
    shop_a_learner, monkeypatch
):
    monkeypatch.setattr(transfer, "TRANSFER_EVIDENCE", 100.0)  # below what shop A saw
    old, new, fresh = shop_a_learner, mtl(SMALL), mtl(SMALL)
    init_from(new, old.state_dict())
    old_net, new_net = old.net.state_dict(), new.net.state_dict()
    for name in (
        "content_tower.0.weight",
        "towers.bottom.0.weight",
        "heads.bias",
        "dense_wide.weight",
    ):
        assert torch.equal(new_net[name], old_net[name]), name
    assert torch.equal(new_net["content.weight"], old_net["content.weight"])
    assert torch.equal(new_net["content.squared_gradients"], old_net["content.squared_gradients"])
    for table in ("token", "brand", "device"):  # rows keep their meaning
        old_table, new_table = old.encoder.tables[table], new.encoder.tables[table]
        assert len(old_table) > 0
        assert {k: new_table.row(k) for k in new_table.ids()} == {
            k: old_table.row(k) for k in old_table.ids()
        }
    # no user or item: rows, tables, counts, histories and statistics are a fresh learner's
    assert torch.equal(new_net["ids.weight"], fresh.net.state_dict()["ids.weight"])
    assert not new_net["ids.squared_gradients"].any()
    assert new.table_stats()["user"] == new.table_stats()["item"] == 0
    assert old.table_stats()["user"] > 0 and old.table_stats()["item"] > 0
    assert not new.encoder.history.appended.any()
    assert not new.encoder.stats["item"].values.any() and not new.encoder.stats["user"].values.any()
    assert new.model_version == 0
    # the content's rate statistics, worth TRANSFER_EVIDENCE click trials
    shop = np.zeros(1, np.int64)
    assert old.encoder.shop_stats.get(shop)[0, 0] > 1_000
    assert new.encoder.shop_stats.get(shop)[0, 0] == pytest.approx(100.0)
    brand_rates = [learner.encoder.stats["brand"].get(np.arange(1, 20)) for learner in (old, new)]
    np.testing.assert_allclose(  # scaled alike: the same rates
        brand_rates[1][:, 1] * brand_rates[0][:, 0], brand_rates[0][:, 1] * brand_rates[1][:, 0]
    )
    # Adam goes on from the old moments, at the new learner's own learning rates
    moments = [learner.optimiser.state_dict()["state"] for learner in (old, new)]
    assert moments[0] and moments[0].keys() == moments[1].keys()
    for key, values in moments[0].items():
        assert torch.equal(moments[1][key]["exp_avg_sq"], values["exp_avg_sq"])
    slower = mtl(replace(SMALL, dense_lr=0.001))
    init_from(slower, old.state_dict())
    assert [g["lr"] for g in slower.optimiser.param_groups] == [0.001, SMALL.sparse_lr, DEMAND_LR]


def test_the_new_shop_then_learns_its_own_users_and_items(shop_a_learner):
    new = mtl(SMALL)
    init_from(new, shop_a_learner.state_dict())
    samples = shop_samples(1, events=600)
    new.learn(samples[:256])
    assert new.model_version == 1
    assert all(key.startswith("u1_") for key in new.encoder.tables["user"].ids())
    assert all(key.startswith("i1_") for key in new.encoder.tables["item"].ids())
    assert np.isfinite(new.predict(samples[256:300])).all()


def test_transfer_scores_a_new_shop_better_than_a_fresh_learner_at_first(shop_a_learner):
    """Shop B's first samples, never learned: content known from shop A tells clicks apart."""
    from online_models.evaluation import auc

    new, fresh = mtl(SMALL), mtl(SMALL)
    init_from(new, shop_a_learner.state_dict())
    samples = shop_samples(1)
    clicks = [s.click for s in samples]
    assert (
        auc(new.predict(samples)[:, 0], clicks) > auc(fresh.predict(samples)[:, 0], clicks) + 0.05
    )


@pytest.mark.parametrize(
    "change, named",
    [({"embedding_dim": 16}, "embedding_dim"), ({"architecture": "mmoe"}, "architecture")],
)
def test_a_learner_of_another_configuration_is_refused(shop_a_learner, change, named):
    other = mtl(replace(SMALL, **change))
    with pytest.raises(ValueError, match=named):
        init_from(other, shop_a_learner.state_dict())


def test_a_learner_that_has_learned_is_not_overwritten(shop_a_learner):
    learner = mtl(SMALL)
    learner.learn(shop_samples(1, events=300)[:10])
    with pytest.raises(ValueError, match="fresh learner"):
        init_from(learner, shop_a_learner.state_dict())


def test_the_state_of_another_kind_of_learner_is_refused():
    from online_models.learner import single_task

    with pytest.raises(ValueError, match="single_task"):
        init_from(mtl(SMALL), single_task(SMALL).state_dict())


def test_tensors_of_another_shape_are_refused(shop_a_learner):
    state = shop_a_learner.state_dict()
    net = dict(state["net"])
    net["dense_wide.weight"] = torch.zeros(3, 5)  # an older release's dense features
    with pytest.raises(ValueError, match=r"dense_wide\.weight"):
        init_from(mtl(SMALL), {**state, "net": net})


# ---------------------------------------------------------------- the commands


def worker_messages(shop: int, events: int) -> list[RawMessage]:
    records = Shop(replace(SHOP, shop=shop, events=events, delay_scale=1 / 60)).records()
    wire = [encode_event(r) for r in records if isinstance(r, Event)]
    return [RawMessage(0, offset, None, value) for offset, value in enumerate(wire)]


def test_a_worker_of_a_new_shop_starts_from_another_shops_checkpoint_once(tmp_path):
    shop_a = WorkerService(Settings(checkpoint_dir=tmp_path / "a", topic_prefix="a."))
    messages = worker_messages(0, 2_000)
    for start in range(0, len(messages), 500):
        shop_a.events_batch(messages[start : start + 500])
    shop_a.checkpoint(background=False)
    brands = set(shop_a.pipeline.learner.encoder.tables["brand"].ids())
    assert brands and shop_a.pipeline.learner.model_version > 0
    (checkpoint,) = (tmp_path / "a").glob("*.pt")

    settings = Settings(checkpoint_dir=tmp_path / "b", topic_prefix="b.", init_from=checkpoint)
    shop_b = WorkerService(settings)
    learner = shop_b.pipeline.learner
    assert shop_b.initialised_from == str(checkpoint) and shop_b.restored_from is None
    assert set(learner.encoder.tables["brand"].ids()) == brands
    assert learner.table_stats()["item"] == learner.table_stats()["user"] == 0
    b_messages = worker_messages(1, 2_000)
    for start in range(0, len(b_messages), 500):
        shop_b.events_batch(b_messages[start : start + 500])
    shop_b.checkpoint(background=False)
    version, items = learner.model_version, learner.table_stats()["item"]

    restarted = WorkerService(settings)  # a restart resumes its own state
    assert restarted.restored_from is not None and restarted.initialised_from is None
    assert restarted.pipeline.learner.model_version == version > 0
    assert restarted.pipeline.learner.table_stats()["item"] == items > 0


def test_init_from_is_a_setting_from_flag_or_environment(tmp_path):
    from streams.cli import build_parser

    assert Settings.from_env({"RECSTREAM_INIT_FROM": "a.pt"}).init_from.name == "a.pt"
    args = build_parser().parse_args(["worker", "--init-from", str(tmp_path / "b.pt")])
    assert Settings.from_env({"RECSTREAM_INIT_FROM": "a.pt"}).with_args(args).init_from == (
        tmp_path / "b.pt"
    )
    assert Settings().init_from is None


def test_a_worker_refuses_a_file_that_is_no_checkpoint(tmp_path):
    from streams.checkpoint import CheckpointError

    bad = tmp_path / "not.pt"
    bad.write_bytes(b"nothing")
    with pytest.raises(CheckpointError, match=r"not\.pt"):
        WorkerService(Settings(checkpoint_dir=tmp_path / "b", init_from=bad))


def test_bench_quality_starts_mtl_from_a_checkpoint(tmp_path, shop_a_learner):
    path = CheckpointStore(tmp_path, owner="a.events").save(
        {"pipeline": {"learner": mtl().state_dict()}}, {}
    )
    options = QualityOptions(
        events=1_500, models=("mtl",), progress=False, topk=False, shop=1, batch_size=256
    )
    report = run_quality(replace(options, init_from=path))
    assert report["init_from"] == str(path)
    assert report["models"]["mtl"]["labels_learned"]["click"] > 0
    small = CheckpointStore(tmp_path / "small", owner="a.events").save(
        {"pipeline": {"learner": shop_a_learner.state_dict()}}, {}
    )
    with pytest.raises(ValueError, match="token_rows"):  # the bench's mtl is full-size
        run_quality(replace(options, init_from=small))


def test_bench_transfer_reports_both_windows_per_task(tmp_path, capsys):
    report_path = tmp_path / "transfer.json"
    argv = ["bench", "transfer", "--seeds", "7", "--events", "2000", "--report", str(report_path)]
    assert main(argv) == 0
    report = json.loads(report_path.read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert report["windows"] == {"early": [0, 200], "late": [1800, 2000]}
    for window in ("early", "late"):
        for task in ("click", "cart", "purchase"):
            figures = report[window][task]
            assert {"transfer_auc", "scratch_auc", "difference", "difference_se"} <= set(figures)
        assert report["per_seed"]["7"][window]["click"]["samples"] > 0
