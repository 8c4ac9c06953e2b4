"""DashFusion's mechanisms: the retrieval table (intended and published indexing), its refresh
every k epochs and its round trip through checkpoints and resumes, the contrastive loss against
the published formula, the 8 -> 4 -> 2 bottleneck and wholly missing modalities."""

from __future__ import annotations

import math

import pytest
import torch
from tests_support import TINY

from fsrf import MODALITIES, Config, config_from_dict, load_checkpoint, train, with_overrides
from fsrf._rng import isolated_rng
from fsrf._run_data import load_dataset
from fsrf._steps import EpochContext, step_loss
from fsrf.missing import apply_keep, pattern_keep
from fsrf.model import EpochInfo, TrainBatch, build_model, total_loss
from fsrf.model.zoo.dashfusion import DashFusion, attend, draw_retrieved, group_ntxent, retrieval_table

SMALL = {
    **TINY,
    "data": {**TINY["data"], "synthetic_train": 64, "synthetic_valid": 32, "synthetic_test": 32},
    "model": {"name": "dashfusion", "hidden": 16, "heads": 2},
    "missing": {"valid_rates": [0.0]},
    "optim": {"batch_size": 16, "lr": 3e-3},
    "train": {"epochs": 4, "num_threads": 2, "task_loss": "mse"},
}


def _config(**model) -> Config:
    return config_from_dict({**SMALL, "model": {**SMALL["model"], **model}}, source="test_dashfusion")


@pytest.fixture(scope="module")
def small_dataset():
    return load_dataset(_config().data)


def _model(config: Config, seed: int = 0) -> DashFusion:
    with isolated_rng(seed):
        return build_model(config)


def _info(dataset, epoch: int = 0) -> EpochInfo:
    return EpochInfo(epoch=epoch, epochs=4, train=dataset.train, device=torch.device("cpu"), batch_size=256)


def _ctx(config: Config, dataset, model: DashFusion) -> EpochContext:
    return EpochContext.create(config, dataset, model, torch.device("cpu"), torch.Generator().manual_seed(0))


def _refreshed(model: DashFusion, dataset, epoch: int = 0) -> DashFusion:
    model.eval()
    with torch.no_grad():
        model.on_epoch_start(_info(dataset, epoch))
    return model.train()


# --- the retrieval table ----------------------------------------------------------------------------


def _published_lists(embeddings: torch.Tensor, labels: list[float], *, pool: int, mode: str,
                     near: float = 1.0, far: float = 1.0) -> torch.Tensor:
    """The authors' list building, loop for loop: ``index`` appends ``rank[i][j]`` (intended),
    ``rank`` appends the position ``j`` (as published; the far list's negative j indexes from the end)."""
    n = len(labels)
    z = torch.nn.functional.normalize(embeddings, dim=1)
    sim = (z @ z.T).tolist()
    rank = [sorted(range(n), key=lambda j, i=i: (-sim[i][j], j)) for i in range(n)]
    out = torch.full((n, 3, pool), -1, dtype=torch.long)
    for i in range(n):
        positive, hard, negative = [], [], []
        for j in range(int(n * near)):
            if (rank[i][j] if mode == "index" else j) == i:
                continue
            item = rank[i][j] if mode == "index" else j
            (positive if labels[i] == labels[rank[i][j]] else hard).append(item)
        for j in range(-1, -int(n * far), -1):
            if labels[i] != labels[rank[i][j]]:
                negative.append(rank[i][j] if mode == "index" else n + j)
        for k, found in enumerate((positive, negative, hard)):
            out[i, k, : len(found[:pool])] = torch.tensor(found[:pool], dtype=torch.long)
    return out


def _circle(degrees: list[float]) -> torch.Tensor:
    angles = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([angles.cos(), angles.sin()], dim=1).float()


def test_index_retrieval_returns_the_neighbours_the_similarity_ranks_and_rank_retrieval_does_not() -> None:
    # sample 0 at 0 deg (label 0); by cosine its ranking is 0, 2 (10 deg), 4 (20), 1 (50), 5 (60), 3 (170)
    emb, labels = _circle([0, 50, 10, 170, 20, 60]), torch.tensor([0.0, 1, 0, 1, 1, 0])
    index = retrieval_table(emb, labels, pool=3, mode="index")
    assert index[0].tolist() == [[2, 5, -1], [3, 1, 4], [4, 1, 3]]  # positives, far negatives, hard negatives
    # the published indexing stores rank positions: its "positives" 1 and 4 carry label 1, not the anchor's 0
    rank = retrieval_table(emb, labels, pool=3, mode="rank")
    assert rank[0].tolist() == [[1, 4, -1], [5, 3, 2], [2, 3, 5]]
    assert set(labels[rank[0, 0, :2]].tolist()) == {1.0}
    for i in range(6):  # intended: every positive shares the anchor's label, every negative does not
        assert all(labels[j] == labels[i] and j != i for j in index[i, 0].tolist() if j >= 0)
        assert all(labels[j] != labels[i] for j in index[i, 1:].flatten().tolist() if j >= 0)


@pytest.mark.parametrize("mode", ["index", "rank"])
@pytest.mark.parametrize(("near", "far"), [(1.0, 1.0), (0.625, 0.5)])
def test_the_table_equals_the_published_loops_in_both_modes(mode: str, near: float, far: float) -> None:
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(40, 6, generator=g)
    labels = torch.randint(-3, 4, (40,), generator=g).float()
    table = retrieval_table(emb, labels, pool=5, mode=mode, near_window=near, far_window=far, chunk=7)
    assert torch.equal(table, _published_lists(emb, labels.tolist(), pool=5, mode=mode, near=near, far=far))
    other = retrieval_table(emb, labels, pool=5, mode="rank" if mode == "index" else "index",
                            near_window=near, far_window=far)
    assert not torch.equal(table, other)


def test_draws_are_distinct_list_entries_and_short_lists_leave_slots_empty() -> None:
    table = torch.tensor([[[4, 5, 6, 7], [8, -1, -1, -1], [-1, -1, -1, -1]]])
    seen = set()
    for seed in range(200):
        drawn = draw_retrieved(table, torch.tensor([0, 0]), generator=torch.Generator().manual_seed(seed))
        assert drawn.shape == (2, 6)
        for row in drawn.tolist():
            assert row[0] != row[1] and {row[0], row[1]} <= {4, 5, 6, 7}
            assert sorted(row[2:4]) == [-1, 8] and row[4:] == [-1, -1]
            seen.add(tuple(sorted(row[:2])))
    assert len(seen) == 6  # every pair of the four positives comes up


# --- the loss ------------------------------------------------------------------------------------------

# the published index tuple over [text, vision, audio, fused] x [anchor, 2 positives, 4 negatives]
_A1 = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 0, 0, 7, 7, 14, 14, 21, 21]
_P = [7, 14, 8, 15, 9, 16, 10, 17, 11, 18, 12, 19, 13, 20, 1, 2, 8, 9, 15, 16, 22, 23]
_A2 = [0, 0, 0, 0, 7, 7, 7, 7, 14, 14, 14, 14, 21, 21, 21, 21]
_N = [3, 4, 5, 6, 10, 11, 12, 13, 17, 18, 19, 20, 24, 25, 26, 27]


def _published_ntxent(groups: torch.Tensor, tau: float, valid_slots: set[int]) -> torch.Tensor:
    """pytorch-metric-learning's NT-Xent (cosine, mean over positive pairs) on the published
    tuple, per anchor group, then averaged; pairs touching a slot not in ``valid_slots`` dropped."""
    losses = []
    for group in groups[:, [0, 2, 1, 3]]:  # our spaces (text, audio, vision, fused) -> theirs
        x = torch.nn.functional.normalize(group.reshape(28, -1), dim=1)
        s = (x @ x.T / tau).double()
        ok = lambda i: i % 7 in valid_slots
        pair_losses = []
        for a, p in zip(_A1, _P):
            if ok(a) and ok(p):
                negatives = [s[a, n].exp() for a2, n in zip(_A2, _N) if a2 == a and ok(n)]
                denominator = s[a, p].exp() + sum(negatives, torch.tensor(0.0))
                pair_losses.append(-torch.log(s[a, p].exp() / denominator))
        losses.append(torch.stack(pair_losses).mean())
    return torch.stack(losses).mean()


@pytest.mark.parametrize("missing", [(), (2,), (5, 6)])
def test_the_loss_is_the_published_ntxent(missing: tuple[int, ...]) -> None:
    groups = torch.randn(3, 4, 7, 5, generator=torch.Generator().manual_seed(0))
    valid = torch.ones(3, 7, dtype=torch.bool)
    valid[:, list(missing)] = False
    ours = group_ntxent(groups, valid, 0.5)
    expected = _published_ntxent(groups, 0.5, set(range(7)) - set(missing))
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)


# --- the table's schedule, state dict and resume -----------------------------------------------------


def test_the_table_refreshes_exactly_every_k_epochs(small_dataset, monkeypatch) -> None:
    model = _model(_config(refresh_every=3))
    calls = []
    monkeypatch.setattr(DashFusion, "refresh", lambda self, info: (calls.append(info.epoch),
                                                                   setattr(self, "_refreshed", info.epoch)))
    for epoch in range(8):
        model.on_epoch_start(_info(small_dataset, epoch))
        model.on_epoch_end(_info(small_dataset, epoch))
    assert calls == [0, 3, 6]
    calls.clear()
    _model(_config(contrast=0.0)).on_epoch_start(_info(small_dataset))
    assert calls == []  # no term, no table


def test_the_model_builds_its_table_from_its_embeddings_and_it_round_trips(small_dataset, tmp_path) -> None:
    for mode in ("index", "rank"):
        model = _refreshed(_model(_config(retrieval=mode)), small_dataset)
        with torch.no_grad():
            means = model.eval().embed(small_dataset.train.features, small_dataset.train.valid)
        vectors = torch.cat([means[m] for m in MODALITIES], dim=1)
        expected = retrieval_table(vectors, small_dataset.train.labels.round(), pool=10, mode=mode)
        assert torch.equal(model.table, expected) and model.refreshed_at == 0
        torch.save(model.state_dict(), tmp_path / "m.pt")
        fresh = _model(_config(retrieval=mode), seed=1)
        assert fresh.table.numel() == 0 and fresh.refreshed_at == -1
        fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
        assert torch.equal(fresh.table, model.table) and fresh.refreshed_at == 0


def test_resume_between_refreshes_equals_an_uninterrupted_run(small_dataset, tmp_path, monkeypatch) -> None:
    config = with_overrides(_config(refresh_every=2), {"train.epochs": 3})
    calls = []
    refresh = DashFusion.refresh

    def spy(self, info):
        calls.append(info.epoch)
        refresh(self, info)

    monkeypatch.setattr(DashFusion, "refresh", spy)
    full = train(config, dataset=small_dataset, out_dir=tmp_path / "full", tensorboard=False)
    assert calls == [0, 2]
    assert all(row["train/loss/contrast"] > 0 for row in full.history)

    class Stop(Exception):
        pass

    def stop_after_one(metrics, checkpoint) -> None:
        if metrics["epoch"] == 1:
            raise Stop  # epoch 1 (0-based) must train on the table refreshed at epoch 0

    calls.clear()
    with pytest.raises(Stop):
        train(config, dataset=small_dataset, out_dir=tmp_path / "cut", report=stop_after_one, tensorboard=False)
    assert calls == [0]
    stored = load_checkpoint(tmp_path / "cut" / "last.pt")["model"]["_extra_state"]
    assert int(stored["refreshed"]) == 0 and stored["table"].shape == (64, 3, 10)
    calls.clear()
    resumed = train(config, dataset=small_dataset, out_dir=tmp_path / "cut", tensorboard=False,
                    resume_from=tmp_path / "cut" / "last.pt")
    assert calls == [2]  # epoch 1 read the stored table; epoch 2 refreshed on schedule
    assert resumed.history == full.history
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    for key, value in a["model"].items():
        if key == "_extra_state":
            assert torch.equal(value["table"], b["model"][key]["table"])
            assert int(value["refreshed"]) == int(b["model"][key]["refreshed"]) == 2
        else:
            assert torch.equal(value, b["model"][key]), key


# --- the network --------------------------------------------------------------------------------------


def _inputs(config: Config, batch: int = 4):
    g = torch.Generator().manual_seed(0)
    dims, lens = config.data.dims(), config.data.lengths()
    x = {m: torch.randn(batch, lens[m], dims[m], generator=g) for m in MODALITIES}
    return x, {m: torch.ones(batch, lens[m], dtype=torch.bool) for m in MODALITIES}


def test_the_bottleneck_halves_per_level() -> None:
    for depth, tokens in ((3, [8, 4, 2]), (2, [8, 4]), (4, [8, 4, 2, 1])):
        config = _config(fusion_depth=depth)
        x, valid = _inputs(config)
        out = _model(config).eval()(x, valid)
        assert [b.shape for b in out.bottlenecks] == [(4, k, 16) for k in tokens]
    mosei = config_from_dict({"data": {"dataset": "mosei"}, "model": {"name": "dashfusion"}}).model
    assert mosei.level_tokens() == (8, 4, 2) and mosei.encoder_layers == 4
    assert _config().model.level_tokens() == (8, 4)  # MOSI / SIMS depth 2


def test_a_query_with_no_attendable_key_gets_zero_and_finite_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 2, 3, 4, generator=g, requires_grad=True)
    k = torch.randn(2, 2, 5, 4, generator=g, requires_grad=True)
    v = torch.randn(2, 2, 5, 4, generator=g, requires_grad=True)
    mask = torch.tensor([[False] * 5, [True, False, True, False, False]])
    out = attend(q, k, v, mask, 0.5)
    assert bool((out[0] == 0).all())  # sample 0 has no key: zero, not NaN
    kept = [0, 2]
    seen = torch.nn.functional.scaled_dot_product_attention(q[1:], k[1:, :, kept], v[1:, :, kept], scale=0.5)
    assert torch.allclose(out[1:], seen, atol=1e-6)  # sample 1 reads its attendable keys only
    out.sum().backward()
    assert all(bool(torch.isfinite(t.grad).all()) for t in (q, k, v))


@pytest.mark.parametrize("missing", MODALITIES)
def test_a_wholly_missing_modality_gives_finite_outputs_terms_and_gradients(missing, small_dataset) -> None:
    config = _config()
    model = _refreshed(_model(config), small_dataset)
    index = torch.arange(8)
    batch = small_dataset.train.take(index)
    keep = pattern_keep(batch.valid, [m for m in MODALITIES if m != missing])
    step = model.training_step(TrainBatch(
        features=apply_keep(batch.features, keep), valid=batch.valid, keep=keep, labels=batch.labels,
        complete=batch.features, views=1, index=index,
    ))
    total, terms = total_loss(step, batch.labels, config.model.weights(), task="mse")
    assert all(bool(torch.isfinite(v)) for v in terms.values()) and float(terms["contrast"]) > 0
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)


def test_zero_frames_are_padding_only_under_mask_zero_frames() -> None:
    for rule in (True, False):
        config = _config(mask_zero_frames=rule)
        model = _model(config).eval()
        x, valid = _inputs(config)
        dropped = {m: v.clone() for m, v in valid.items()}
        dropped["audio"][:, 3:9] = False
        x = apply_keep(x, dropped)  # frames 3-8 of audio zeroed
        same = torch.allclose(model(x, valid).pred, model(x, dropped).pred, atol=1e-6)
        assert same == rule


def test_the_term_is_off_until_a_table_exists_and_on_in_training(small_dataset) -> None:
    config = _config()
    model = _model(config)
    ctx = _ctx(config, small_dataset, model)
    index = torch.arange(16)
    _, terms = step_loss(ctx, small_dataset.train.take(index), max_rate=0.5, index=index)
    assert float(terms["contrast"]) == 0.0  # before the first on_epoch_start (the compile warm-up's case)
    _refreshed(model, small_dataset)
    _, terms = step_loss(ctx, small_dataset.train.take(index), max_rate=0.5, index=index)
    assert float(terms["contrast"]) > 0.0
    _, terms = step_loss(ctx, small_dataset.train.take(index), max_rate=0.5)  # a batch without indices
    assert float(terms["contrast"]) == 0.0
    off = with_overrides(config, {"model.contrast": 0.0})
    ctx = _ctx(off, small_dataset, _model(off))
    assert "contrast" not in step_loss(ctx, small_dataset.train.take(index), max_rate=0.5, index=index)[1]


@pytest.mark.parametrize("finetune", [False, True])
def test_tokens_mode_refreshes_and_contrasts_through_the_text_encoder(finetune, tmp_path_factory) -> None:
    from test_text_tokens import _config as token_config
    from test_text_tokens import _save_bert, _token_data

    from fsrf.data import save_mmsa

    root = tmp_path_factory.mktemp("dashfusion-tokens")
    bert, data = _save_bert(root / "bert"), root / "tokens.pkl"
    save_mmsa(data, _token_data())
    config = token_config(bert, data, "dashfusion", data={"text_finetune": finetune})
    dataset = load_dataset(config.data)
    model = _refreshed(_model(config), dataset)
    assert model.table.shape == (len(dataset.train), 3, 10) and int(model.table[:, 0, 0].min()) >= 0
    ctx = _ctx(config, dataset, model)
    index = torch.arange(8)
    total, terms = step_loss(ctx, dataset.train.take(index), max_rate=0.5, index=index)
    total.backward()
    assert float(terms["contrast"]) > 0 and bool(torch.isfinite(total))
    bert_grads = [p.grad for p in model.text_encoder.model.parameters()]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in bert_grads) == finetune
