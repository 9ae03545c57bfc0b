"""SASRec / GRU4Rec: they learn an obvious pattern, rank with a deterministic tie-break, save and load
to identical scores, resume after an interruption, and reject bad settings."""

from __future__ import annotations

import json
import random

import pytest
import torch

from softrec.baselines import classic
from softrec.baselines.classic import (
    encode_histories,
    encode_training,
    item_embeddings,
    load_ranker,
    rank_from_scores,
    train_classic,
)
from softrec.config import load_config
from softrec.data.dataset import Domain, Item, Sample, write_prepared
from softrec.errors import UserError
from softrec.metrics import aggregate

N_ITEMS = 20


def successor_dataset(path, n_users: int = 40, seed: int = 0):
    """Every user walks the catalogue in order (item i is followed by i + 1, wrapping around)."""
    rng = random.Random(seed)
    splits: dict[str, list[Sample]] = {"train_full": [], "valid": [], "test": []}
    for user in range(n_users):
        start = rng.randrange(N_ITEMS)
        items = [(start + step) % N_ITEMS for step in range(12)]
        windows = [(items[max(0, t - 5):t], items[t], t) for t in range(1, len(items))]
        # the last two windows are valid and test, the rest train
        for history, target, t in windows[:-2]:
            splits["train_full"].append(Sample(f"tr-{user}-{t}", f"u{user}", tuple(history), target, float(t)))
        for (history, target, t), split in zip(windows[-2:], ("valid", "test"), strict=True):
            splits[split].append(Sample(f"{split}-{user}", f"u{user}", tuple(history), target, float(t)))
    splits["train"] = splits["train_full"][:64]
    catalogue = [Item(i, f"Item {i}") for i in range(N_ITEMS)]
    return write_prepared(path, name="successor", domain=Domain(), catalogue=catalogue, splits=splits,
                          stats={"items": N_ITEMS})


def tiny_config(method: str, **extra):
    settings = {"train.method": method, "classic.hidden": 32, "classic.layers": 1, "classic.heads": 1,
                "classic.inner": 64, "classic.dropout": 0.0, "classic.max_len": 8, "classic.batch_size": 16,
                "classic.learning_rate": 5e-3, "classic.epochs": 12, "classic.patience": 12, **extra}
    return load_config(values=settings)


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: a second intra-op thread only thrashes when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def successor(tmp_path_factory):
    return successor_dataset(tmp_path_factory.mktemp("data") / "successor")


@pytest.mark.parametrize("method", ["sasrec", "gru4rec"])
def test_learns_successor_pattern(method, successor, tmp_path):
    result = train_classic(tiny_config(method), successor, tmp_path / "run", progress=False)
    scores = load_ranker(tmp_path / "run")(successor.split("test"))
    assert scores.shape == (len(successor.split("test")), N_ITEMS)
    _, ranks = rank_from_scores(scores, [s.target for s in successor.split("test")])
    test = aggregate(ranks, ks=(1, 10))
    assert test["HR@1"] >= 0.9, test
    assert result["valid"]["HR@1"] >= 0.9
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["method"] == method and info["base_model"] is None
    assert info["dataset_key"] == successor.checksum
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    assert {"train_loss", "valid"} <= set(history[0]) and "NDCG@10" in history[0]["valid"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_bpr_loss_learns_too(successor, tmp_path):
    train_classic(tiny_config("sasrec", **{"classic.loss": "bpr", "classic.epochs": 15}), successor,
                  tmp_path / "run", progress=False)
    scores = load_ranker(tmp_path / "run")(successor.split("test"))
    _, ranks = rank_from_scores(scores, [s.target for s in successor.split("test")])
    assert aggregate(ranks, ks=(10,))["HR@10"] >= 0.9


def test_rank_from_scores_breaks_ties_by_item_id():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.9, 0.1], [1.0, 1.0, 1.0, 1.0, 1.0]])
    ranked, ranks = rank_from_scores(scores, [2, 3], top_n=4)
    assert ranked == [[1, 3, 0, 2], [0, 1, 2, 3]]
    assert ranks == [3, 3]
    ranked, none = rank_from_scores(scores, top_n=2)
    assert ranked == [[1, 3], [0, 1]] and none is None
    # excluded items go below everything else, still ordered by id among themselves
    ranked, ranks = rank_from_scores(scores, [1, 0], top_n=5, exclude=[[3], [0, 2]])
    assert ranked == [[1, 0, 2, 4, 3], [1, 3, 4, 0, 2]]
    assert ranks == [0, 3]


def test_rank_matches_a_full_sort_on_random_ties():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (6, 30), generator=generator).float()
    targets = torch.randint(0, 30, (6,), generator=generator).tolist()
    ranked, ranks = rank_from_scores(scores, targets, top_n=30)
    for row, target in enumerate(targets):
        expected = sorted(range(30), key=lambda i: (-scores[row, i].item(), i))
        assert ranked[row] == expected
        assert ranks[row] == expected.index(target)


def test_encode_histories_left_pads_and_truncates():
    samples = [Sample("a", "u", (3, 4, 5, 6), 0), Sample("b", "u", (7,), 0)]
    assert encode_histories(samples, max_len=3).tolist() == [[5, 6, 7], [0, 0, 8]]


def test_user_chains_rebuild_sequences_from_windows():
    samples = [
        Sample("a2", "u", (1, 2), 3, 2.0), Sample("a1", "u", (1,), 2, 1.0),        # growing (out of order)
        Sample("a3", "u", (2, 3), 4, 3.0), Sample("a4", "u", (3, 4), 5, 4.0),      # then sliding
        Sample("a5", "u", (9, 8), 7, 5.0),                                          # does not line up
        Sample("b1", "v", (1,), 2, 1.0),
    ]
    assert classic.user_chains(samples) == [[1, 2, 3, 4, 5], [9, 8, 7], [1, 2]]


def test_chain_pieces_label_every_transition_once():
    chain = list(range(10))
    pieces = classic.chain_pieces(chain, context=4)
    assert [items for items, _ in pieces] == [[0, 1, 2, 3, 4], [2, 3, 4, 5, 6], [4, 5, 6, 7, 8], [5, 6, 7, 8, 9]]
    targets = [item for items, labelled in pieces for item, flag in zip(items[1:], labelled, strict=True) if flag]
    assert targets == chain[1:]
    assert classic.chain_pieces([3, 4], context=4) == [([3, 4], [True])]


def test_encode_training_all_and_last():
    samples = [Sample("a1", "u", (1,), 2, 1.0), Sample("a2", "u", (1, 2), 3, 2.0), Sample("b1", "v", (4,), 5, 1.0)]
    inputs, labels = encode_training(samples, context=3)
    assert inputs.tolist() == [[2, 3], [0, 5]]
    assert labels.tolist() == [[2, 3], [-100, 5]]
    inputs, labels = encode_training(samples, context=3, positions="last")
    assert inputs.tolist() == [[0, 2], [2, 3], [0, 5]]
    assert labels.tolist() == [[-100, 2], [-100, 3], [-100, 5]]


@pytest.mark.parametrize("method", ["sasrec", "gru4rec"])
def test_position_outputs_equal_those_of_the_prefix(method):
    """What makes dropping covered prefixes exact: the output at position j of a sequence does not
    depend on later items, on padding, or on the sequence's length."""
    torch.manual_seed(0)
    model = classic.build_model(method, N_ITEMS, tiny_config(method).classic).eval()
    full = torch.tensor([[0, 0, 3, 7, 9, 2]])
    prefix = torch.tensor([[0, 0, 0, 0, 3, 7]])
    with torch.no_grad():
        assert torch.allclose(model(full)[0, 3], model(prefix)[0, -1], atol=1e-5)
        assert torch.allclose(model(full)[0, 2:4], model(full[:, 1:4])[0, -2:], atol=1e-5)


def test_last_position_training_learns_too(successor, tmp_path):
    config = tiny_config("gru4rec", **{"classic.train_positions": "last", "classic.epochs": 15})
    result = train_classic(config, successor, tmp_path / "run", progress=False)
    assert result["valid"]["HR@1"] >= 0.9


def test_save_load_roundtrip_and_reuse(successor, tmp_path):
    config = tiny_config("sasrec", **{"classic.epochs": 2})
    first = train_classic(config, successor, tmp_path / "run", progress=False)
    assert not first["reused"]
    test = successor.split("test")
    scores_a = load_ranker(tmp_path / "run")(test)
    scores_b = load_ranker(tmp_path / "run")(test)
    assert torch.equal(scores_a, scores_b)
    # the same model in memory gives the same scores as the loaded one
    model, _ = classic.load_model(tmp_path / "run")
    assert torch.equal(classic.score_samples(model, test, 8), scores_a)
    assert item_embeddings(tmp_path / "run").shape == (N_ITEMS, 32)
    again = train_classic(config, successor, tmp_path / "run", progress=False)
    assert again["reused"] and again["best_epoch"] == first["best_epoch"]


def test_resume_after_interruption_matches_uninterrupted_run(successor, tmp_path, monkeypatch):
    config = tiny_config("gru4rec", **{"classic.epochs": 4, "classic.dropout": 0.1})
    train_classic(config, successor, tmp_path / "straight", progress=False)

    real_validate = classic._validate
    calls = {"n": 0}

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(classic, "_validate", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        train_classic(config, successor, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(classic, "_validate", real_validate)
    history = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert len(history) == 2
    result = train_classic(config, successor, tmp_path / "resumed", resume=True, progress=False)
    assert result["epochs_run"] == 4 and not result["reused"]
    straight = json.loads((tmp_path / "straight" / "history.json").read_text())
    resumed = json.loads((tmp_path / "resumed" / "history.json").read_text())
    for a, b in zip(straight, resumed, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["valid"] == b["valid"]
    test = successor.split("test")
    assert torch.allclose(load_ranker(tmp_path / "straight")(test), load_ranker(tmp_path / "resumed")(test),
                          atol=1e-5)


def test_resume_with_other_settings_is_refused(successor, tmp_path):
    train_classic(tiny_config("sasrec", **{"classic.epochs": 1}), successor, tmp_path / "run", progress=False)
    with pytest.raises(UserError, match="other settings"):
        train_classic(tiny_config("sasrec", **{"classic.epochs": 1, "classic.hidden": 16, "classic.heads": 1}),
                      successor, tmp_path / "run", resume=True, progress=False)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["classic.hidden=30", "classic.heads=4"], "divisible by heads"),
        (["classic.loss=hinge"], "classic.loss"),
        (["classic.dropout=1.5"], "classic.dropout"),
        (["classic.valid_metric=MRR@10"], "classic.valid_metric"),
    ],
)
def test_bad_settings_are_user_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(overrides=overrides)


def test_wrong_method_and_foreign_items_are_user_errors(successor, tmp_path):
    with pytest.raises(UserError, match="not a classic recommender"):
        train_classic(load_config(values={"train.method": "sft"}), successor, tmp_path / "run", progress=False)
    train_classic(tiny_config("sasrec", **{"classic.epochs": 1}), successor, tmp_path / "run", progress=False)
    ranker = load_ranker(tmp_path / "run")
    with pytest.raises(UserError, match="outside the catalogue"):
        ranker([Sample("x", "u", (N_ITEMS + 5,), 0)])
    with pytest.raises(UserError, match="not a trained"):
        load_ranker(tmp_path / "nothing-here")
