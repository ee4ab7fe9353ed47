"""--item-init cooc|markov: item embeddings from training histories only, deterministic, wired into train.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from p5x.checkpoint import load_checkpoint
from p5x.errors import ConfigError
from p5x.indexing import build_index
from p5x.baselines import training_pairs
from p5x.iteminit import cooccurrence_matrix, cooccurrence_vectors, fit_markov, init_item_embeddings
from p5x.schema import Interaction
from p5x.split import Split, time_split
from p5x.training import TrainConfig, train


def _split(train, valid=None, test=None):
    def seq(u, items):
        return [Interaction(u, i, timestamp=t) for t, i in enumerate(items)]
    return Split({u: seq(u, xs) for u, xs in train.items()},
                 {u: Interaction(u, i, timestamp=100) for u, i in (valid or {}).items()},
                 {u: Interaction(u, i, timestamp=101) for u, i in (test or {}).items()})


def _cos(v, a, b):
    return float(v[a] @ v[b] / (np.linalg.norm(v[a]) * np.linalg.norm(v[b]) + 1e-12))


@pytest.mark.parametrize("n_items,dim", [(12, 4), (80, 8)])  # dense eigh path, then scipy's eigsh
def test_neighbours_in_training_histories_get_close_vectors(n_items, dim):
    items = [f"it{k}" for k in range(n_items)]
    half = n_items // 2
    # two separate chains: items of one chain only ever stand next to items of the same chain
    train = {f"u{k}": [items[(k + j) % half] for j in range(4)] for k in range(40)}
    train.update({f"v{k}": [items[half + (k + j) % half] for j in range(4)] for k in range(40)})
    vec = cooccurrence_vectors(_split(train), items, dim, seed=0)
    assert vec.shape == (n_items, dim) and vec.dtype == np.float32
    assert np.array_equal(vec, cooccurrence_vectors(_split(train), items, dim, seed=0))  # deterministic
    same = np.mean([_cos(vec, k, (k + 1) % half) for k in range(half)])
    other = np.mean([_cos(vec, k, half + k) for k in range(half)])
    assert same > other + 0.3


def test_rank_is_capped_for_wide_tables(monkeypatch):
    import p5x.iteminit as iteminit

    items = [f"it{k}" for k in range(80)]
    train = {f"u{k}": [items[(k + j) % 80] for j in range(5)] for k in range(80)}
    full = cooccurrence_vectors(_split(train), items, 8)
    monkeypatch.setattr(iteminit, "MAX_RANK", 3)
    capped = cooccurrence_vectors(_split(train), items, 8)
    assert capped.shape == (80, 8) and not capped[:, 3:].any() and capped[:, :3].any()
    assert np.allclose(np.abs(capped[:, 0]), np.abs(full[:, 0]), atol=1e-4)  # the leading eigenvector


def test_dense_device_path_agrees_with_arpack():
    """train.py hands its GPU to the init for a dense eigendecomposition; the CPU's torch runs the same
    code here. Both must span the same top eigenspace: compare the Gram matrices V V^T, which do not
    depend on the signs or the basis the solver picked."""
    rng = np.random.default_rng(3)
    items = [f"it{k}" for k in range(90)]
    train = {f"u{k}": [items[j] for j in rng.choice(90, size=6)] for k in range(300)}
    arpack = cooccurrence_vectors(_split(train), items, 10).astype(np.float64)
    dense = cooccurrence_vectors(_split(train), items, 10, device="cpu").astype(np.float64)
    assert dense.shape == arpack.shape and dense[:, :10].any()
    assert np.allclose(dense @ dense.T, arpack @ arpack.T, atol=1e-3)


def test_only_training_interactions_count():
    items = ["a", "b", "c", "d", "e"]
    base = {"u1": ["a", "b"], "u2": ["b", "c"]}
    m = cooccurrence_matrix(_split(base), items).toarray()
    assert m[0, 1] == m[1, 0] == pytest.approx(np.log(2)) and m[0, 2] == 0 and np.all(np.diag(m) == 0)
    held = cooccurrence_vectors(_split(base, valid={"u1": "d"}, test={"u1": "e", "u2": "a"}), items, 3)
    assert np.array_equal(held, cooccurrence_vectors(_split(base), items, 3))
    assert not held[3].any() and not held[4].any()  # d, e: never next to anything in training
    # back-to-back repeats of one item add nothing; an empty history adds nothing
    assert np.array_equal(cooccurrence_matrix(_split({**base, "u3": ["c", "c"], "u4": []}), items).toarray(), m)
    assert not cooccurrence_vectors(_split({"u": ["a"]}), items, 3).any()  # no pair at all: all zero


def test_init_sets_item_rows_and_needs_atomic_ids(toy_ds, tmp_path):
    from p5x.modeling import resolve_backbone
    from p5x.training import build_model, build_tokenizer, task_rows

    split = time_split(toy_ds)
    with pytest.raises(ConfigError, match="--index atomic"):
        init_item_embeddings(None, None, build_index(toy_ds, split, "random", seed=0), split)
    cfg = TrainConfig(data="toy", tasks="sequential", index="atomic", vocab_size=300, output=str(tmp_path)).validate()
    spec = resolve_backbone(cfg.model)
    ix, ux, rows = task_rows(toy_ds, cfg)
    tok = build_tokenizer(cfg, spec, list(ix.pieces()) + list(ux.pieces()), rows, toy_ds, None)
    model = build_model(cfg, spec, tok)
    table = model.backbone.get_input_embeddings().weight
    before = table.detach().clone()
    n = init_item_embeddings(model, tok, ix, split)
    items = list(ix.codes)
    ids = tok.convert_tokens_to_ids([ix.codes[i][0] for i in items])
    vec = torch.from_numpy(cooccurrence_vectors(split, items, table.shape[1]))
    has = vec.abs().sum(1) > 0
    assert n == int(has.sum()) > 0
    rows_now = table.detach()[ids]
    ratio = rows_now[has] / vec[has]
    finite = vec[has].abs() > 1e-6
    assert torch.allclose(ratio[finite], ratio[finite][0].expand_as(ratio[finite]), rtol=1e-3)  # one scale
    assert float(table.detach()[ids][has].std()) == pytest.approx(float(before.std()), rel=0.05)
    untouched = torch.ones(table.shape[0], dtype=torch.bool)
    untouched[torch.tensor(ids)[has]] = False
    assert torch.equal(table.detach()[untouched], before[untouched])  # text pieces keep their init


def test_markov_fit_is_directed_where_cooc_cannot_be():
    """query_map=True: users walk a 12-item cycle forwards only; the fitted model ranks each item's
    successor above its predecessor (cooc's symmetric scores tie them), and the fit is seeded."""
    items = [f"it{k}" for k in range(12)]
    train = {f"u{k}": [items[(k + j) % 12] for j in range(5)] for k in range(120)}
    vec, query, _ = fit_markov(_split(train), items, 8, seed=0, epochs=30, lr=3e-2, query_map=True)
    assert vec.shape == query.shape == (12, 8) and vec.dtype == np.float32
    scores = query @ vec.T
    nxt = [scores[k, (k + 1) % 12] for k in range(12)]
    prev = [scores[k, (k - 1) % 12] for k in range(12)]
    assert all(n > p for n, p in zip(nxt, prev))
    assert sum(int(np.argmax(scores[k]) == (k + 1) % 12) for k in range(12)) >= 10
    again = fit_markov(_split(train), items, 8, seed=0, epochs=30, lr=3e-2, query_map=True)
    assert np.array_equal(vec, again[0]) and np.array_equal(query, again[1])
    cv = cooccurrence_vectors(_split(train), items, 8)
    sym = cv @ cv.T
    assert np.allclose([sym[k, (k + 1) % 12] for k in range(12)], [sym[k, (k - 1) % 12] for k in range(12)],
                       atol=1e-4)


def test_markov_untied_does_not_rank_an_item_after_itself():
    """Users walk a 12-item cycle forwards. The tied fit (one table) scores s * |e_a|^2 for an item
    after itself and ranks every item first after itself; the two-table fit (markov-untied) ranks
    each item's successor first and never the item itself. Seeded like the tied fit."""
    items = [f"it{k}" for k in range(12)]
    train = {f"u{k}": [items[(k + j) % 12] for j in range(5)] for k in range(120)}
    top = {}
    for two in (False, True):
        vec, query, _ = fit_markov(_split(train), items, 8, seed=0, epochs=30, lr=3e-2, two_tables=two)
        assert vec.shape == query.shape == (12, 8)
        top[two] = np.argmax(query @ vec.T, axis=1)
    assert (top[False] == np.arange(12)).sum() >= 10  # what the tied start hands the model
    assert (top[True] == (np.arange(12) + 1) % 12).all()
    again = fit_markov(_split(train), items, 8, seed=0, epochs=30, lr=3e-2, two_tables=True)
    vec, query, _ = fit_markov(_split(train), items, 8, seed=0, epochs=30, lr=3e-2, two_tables=True)
    assert np.array_equal(vec, again[0]) and np.array_equal(query, again[1])


def test_second_stage_keeps_its_start_when_no_pass_beats_it():
    """The held-out choice counts the starting rows as pass 0: rows that already rank every held-out
    answer first come back unchanged, with zero passes (it used to run at least one)."""
    from p5x.iteminit import _fit_pairs

    items = [f"it{k}" for k in range(12)]
    train = {f"u{k}": [items[(k + j) % 12] for j in range(5)] for k in range(120)}
    vec, query, _ = fit_markov(_split(train), items, 8, seed=0, epochs=30, lr=3e-2, two_tables=True)
    src, dst = np.arange(12), (np.arange(12) + 1) % 12
    start = (torch.from_numpy(query), torch.from_numpy(vec), 1.0)
    e, q, passes, s = _fit_pairs(12, 8, src, dst, 0, torch.device("cpu"), 3e-2, 5, check=(src, dst), start=start,
                                 self_weight=1.0)
    assert passes == 0 and torch.equal(e, start[1]) and torch.equal(q, start[0]) and float(s) == 1.0
    worse = (torch.from_numpy(vec), torch.from_numpy(vec), 1.0)  # tied: every item first after itself
    assert _fit_pairs(12, 8, src, dst, 0, torch.device("cpu"), 3e-2, 5, check=(src, dst), start=worse,
                      self_weight=1.0)[2] > 0


def test_markov_reads_training_pairs_only():
    items = ["a", "b", "c", "d", "e"]
    base = {"u1": ["a", "b", "c"], "u2": ["b", "c"], "u3": ["c"]}
    src, dst, last = training_pairs(_split(base), items)
    assert sorted(zip(src.tolist(), dst.tolist(), last.tolist())) == [(0, 1, False), (1, 2, True), (1, 2, True)]
    held = _split(base, valid={"u1": "d"}, test={"u1": "e", "u2": "a"})
    vec, query, _ = fit_markov(held, items, 4, seed=1, epochs=3)
    ref = fit_markov(_split(base), items, 4, seed=1, epochs=3)
    assert np.array_equal(vec, ref[0]) and np.array_equal(query, ref[1])
    assert not vec[3:].any() and not query[3:].any() and vec[:3].any()  # d, e: in no training pair
    two = fit_markov(held, items, 4, seed=1, epochs=3, two_tables=True)
    assert all(np.array_equal(a, b) for a, b in zip(two[:2], fit_markov(_split(base), items, 4, seed=1, epochs=3,
                                                                        two_tables=True)[:2]))
    assert not two[0][3:].any() and not two[1][3:].any() and two[0][:3].any()
    empty = fit_markov(_split({"u": ["a"]}), items, 4)
    assert not empty[0].any() and not empty[1].any()


def test_fitted_rows_are_cached_and_refitted_when_what_they_read_changes(tmp_path, monkeypatch):
    """item_vectors(cache=DIR): the first call fits and writes safetensors, the same call again loads
    the same rows without fitting; another seed, width, device type or a changed training history is
    another key; a damaged entry warns and is fitted again; cache None writes nothing."""
    import p5x.iteminit as it

    items = ["a", "b", "c", "d"]
    data = _split({"u1": ["a", "b", "c"], "u2": ["b", "c", "d"], "u3": ["a", "c"]}, valid={"u1": "d"})
    fits = []
    real = it._item_vectors

    def counted(*a, **k):
        fits.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(it, "_item_vectors", counted)
    for method in ("cooc", "markov", "markov-untied"):
        first = it.item_vectors(method, data, items, 4, seed=1, cache=tmp_path)
        again = it.item_vectors(method, data, items, 4, seed=1, cache=tmp_path)
        assert fits == [method], fits  # the second call read the file
        assert np.array_equal(first[0], again[0])
        assert (first[1] is None) == (again[1] is None) == (method != "markov-untied")
        if first[1] is not None:
            assert np.array_equal(first[1], again[1])
        fits.clear()
    files = sorted(p.name for p in (tmp_path / "item_init").iterdir())
    assert len(files) == 3 and all(f.endswith(".safetensors") for f in files)  # no temp file left behind

    key = it.cache_key("markov", data, items, 4, seed=1)
    assert key == it.cache_key("markov", _split({"u1": ["a", "b", "c"], "u2": ["b", "c", "d"], "u3": ["a", "c"]},
                                                 test={"u2": "a"}), items, 4, seed=1)  # held-out items: same key
    for other in (it.cache_key("markov", data, items, 4, seed=2), it.cache_key("markov", data, items, 8, seed=1),
                  it.cache_key("markov", data, items, 4, seed=1, device="cuda"),
                  it.cache_key("markov", data, items[::-1], 4, seed=1),
                  it.cache_key("markov", _split({"u1": ["a", "b", "c"], "u2": ["b", "d", "c"], "u3": ["a", "c"]}),
                               items, 4, seed=1)):
        assert other != key
    with monkeypatch.context() as m:
        m.setattr(it, "MARKOV_PATIENCE", 3)  # the fit's constants are part of the key
        assert it.cache_key("markov", data, items, 4, seed=1) != key

    entry = tmp_path / "item_init" / f"markov-{key}.safetensors"
    entry.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="unreadable"):
        refit = it.item_vectors("markov", data, items, 4, seed=1, cache=tmp_path)
    assert fits == ["markov"] and refit[0].shape == (4, 4)
    assert it.item_vectors("markov", data, items, 4, seed=1, cache=tmp_path)[0].shape == (4, 4)
    assert fits == ["markov"]  # the refit was written back
    before = sorted((tmp_path / "item_init").iterdir())
    it.item_vectors("markov", data, items, 4, seed=2)  # no cache: fitted, and nothing written anywhere
    assert fits == ["markov"] * 2 and sorted((tmp_path / "item_init").iterdir()) == before
    assert not any(Path(os.environ["P5X_CACHE_DIR"]).iterdir())


def test_cache_dir_setting_then_environment_then_home(monkeypatch, tmp_path):
    from p5x.iteminit import cache_dir

    monkeypatch.setenv("P5X_CACHE_DIR", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(str(tmp_path / "flag")) == tmp_path / "flag"
    assert cache_dir("off") is None
    monkeypatch.setenv("P5X_CACHE_DIR", "off")
    assert cache_dir() is None
    monkeypatch.delenv("P5X_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "p5x"


def test_markov_untied_fills_both_tables_and_needs_an_untied_output_layer(toy_ds, tmp_path):
    """The source rows go into the input table, the answer rows into the output layer, each scaled
    to its table's deviation (one scale per table); a tied backbone is refused with the flag to use."""
    from p5x.iteminit import item_vectors
    from p5x.modeling import resolve_backbone
    from p5x.training import build_model, build_tokenizer, task_rows

    split = time_split(toy_ds)
    cfg = TrainConfig(data="toy", tasks="sequential", index="atomic", vocab_size=300, output=str(tmp_path),
                      item_init="markov-untied", output_layer="untied").validate()
    spec = resolve_backbone(cfg.model)
    ix, ux, rows = task_rows(toy_ds, cfg)
    tok = build_tokenizer(cfg, spec, list(ix.pieces()) + list(ux.pieces()), rows, toy_ds, None)
    model = build_model(cfg, spec, tok)
    tables = [model.backbone.get_input_embeddings().weight, model.backbone.get_output_embeddings().weight]
    assert tables[0].data_ptr() != tables[1].data_ptr()
    before = [t.detach().clone() for t in tables]
    n = init_item_embeddings(model, tok, ix, split, seed=0, method="markov-untied")
    items = list(ix.codes)
    ids = torch.tensor(tok.convert_tokens_to_ids([ix.codes[i][0] for i in items]))
    vec_in, vec_out = item_vectors("markov-untied", split, items, tables[0].shape[1], seed=0)
    has = torch.from_numpy((np.abs(vec_in).sum(1) > 0) & (np.abs(vec_out).sum(1) > 0))
    assert n == int(has.sum()) > 0
    for table, vec, old in zip(tables, (vec_in, vec_out), before):
        got, want = table.detach()[ids][has], torch.from_numpy(vec)[has]
        finite = want.abs() > 1e-6
        ratio = got[finite] / want[finite]
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-3)  # these vectors, one scale
        assert float(got.std()) == pytest.approx(float(old.std()), rel=0.05)
    assert not np.allclose(vec_in[has.numpy()], vec_out[has.numpy()])  # two different tables
    tied = build_model(TrainConfig(data="toy", tasks="sequential", index="atomic", vocab_size=300,
                                   output=str(tmp_path)).validate(), spec, tok)
    with pytest.raises(ConfigError, match="--output-layer untied"):
        init_item_embeddings(tied, tok, ix, split, method="markov-untied")


def test_markov_chooses_its_passes_on_held_out_training_pairs(monkeypatch):
    """epochs=None: the pass count comes from each sequence's held-out last training pair, then the rows
    are refitted on every pair for that many passes. On noise (successors drawn at random) the held-out
    loss turns up early, so it stops well before the cap; on a clean cycle it keeps improving longer."""
    import p5x.iteminit as iteminit

    monkeypatch.setattr(iteminit, "MARKOV_MAX_EPOCHS", 15)
    rng = np.random.default_rng(0)
    items = [f"it{k}" for k in range(40)]
    noise = {f"u{k}": [items[j] for j in rng.choice(40, size=6)] for k in range(150)}
    vec, query, passes = fit_markov(_split(noise), items, 16, seed=0, lr=5e-2)
    assert 1 <= passes < 8
    again = fit_markov(_split(noise), items, 16, seed=0, epochs=passes, lr=5e-2)
    assert np.array_equal(vec, again[0]) and np.array_equal(query, again[1])  # refitted on every pair
    cycle = {f"u{k}": [items[(k + j) % 40] for j in range(6)] for k in range(150)}
    assert fit_markov(_split(cycle), items, 16, seed=0, lr=5e-2)[2] > passes


def test_config_rejects_cooc_without_atomic_ids():
    with pytest.raises(ConfigError, match="--index atomic"):
        TrainConfig(item_init="cooc").validate()
    with pytest.raises(ConfigError, match="--item-init markov: needs --index atomic"):
        TrainConfig(item_init="markov").validate()
    with pytest.raises(ConfigError, match="--item-init"):
        TrainConfig(item_init="svd", index="atomic").validate()
    with pytest.raises(ConfigError, match="--shots"):
        TrainConfig(item_init="cooc", index="atomic", tasks="preference", shots=8).validate()
    with pytest.raises(ConfigError, match="--item-init markov-untied: needs --output-layer untied"):
        TrainConfig(item_init="markov-untied", index="atomic", output_layer="tied").validate()
    with pytest.raises(ConfigError, match="--item-init markov-untied: needs --output-layer untied"):
        TrainConfig(item_init="markov-untied", index="atomic").validate()  # t5-tiny's own layer is tied
    TrainConfig(item_init="markov-untied", index="atomic", model="llama-tiny").validate()  # untied already
    with pytest.raises(ConfigError, match="only for backbones built from a config"):
        TrainConfig(model="smollm2-135m", output_layer="untied").validate()
    with pytest.raises(ConfigError, match="--output-layer: expected one of tied, untied"):
        TrainConfig(output_layer="loose").validate()


@pytest.mark.parametrize("method", ["cooc", "markov", "markov-untied"])
def test_train_with_item_init_and_rank(toy_dir, toy_ds, tmp_path, method):
    """Through train.py's path: the checkpoint records the option and its item rows moved from random."""
    from p5x.inference import build_item_trie, rank_items

    common = dict(data=str(toy_dir), tasks="sequential", epochs=1, batch_size=16, max_steps=2, save_steps=100,
                  use_cpu=True, vocab_size=300, index="atomic", max_source_len=128, max_target_len=8, lr=1e-9)
    base = load_checkpoint(train(TrainConfig(output=str(tmp_path / "r"), **common)), data=toy_ds)
    layer = "untied" if method == "markov-untied" else ""
    ck = load_checkpoint(train(TrainConfig(output=str(tmp_path / "c"), item_init=method, output_layer=layer,
                                           **common)), data=toy_ds)
    assert ck.config["train_config"]["item_init"] == method
    out = ck.model.backbone.get_output_embeddings().weight
    assert (out.data_ptr() == ck.model.backbone.get_input_embeddings().weight.data_ptr()) == (layer != "untied")
    ids = ck.tokenizer.convert_tokens_to_ids(sorted(ck.index.pieces()))
    w_c = ck.model.backbone.get_input_embeddings().weight.detach()
    w_r = base.model.backbone.get_input_embeddings().weight.detach()
    assert not torch.allclose(w_c[ids], w_r[ids])  # the item rows come from the training histories
    user = next(iter(ck.user_index.codes))
    ranked, invalid = rank_items(ck, [f"what will user {ck.user_index.text(user)} buy next ?"],
                                 build_item_trie(ck), beams=4, progress=False)
    assert invalid == 0 and len(set(ranked[0])) == len(ranked[0]) >= 4


def test_resumed_run_keeps_its_trained_rows_and_skips_the_fit(toy_dir, tmp_path, monkeypatch):
    """A run killed after a checkpoint and resumed ends where an uninterrupted one does, without
    fitting the start rows again (the checkpoint's trained rows are what it goes on from)."""
    import shutil

    from safetensors.torch import load_file

    import p5x.iteminit

    common = dict(data=str(toy_dir), tasks="sequential", epochs=1, batch_size=16, max_steps=4, save_steps=2,
                  use_cpu=True, vocab_size=300, index="atomic", item_init="markov", max_source_len=128,
                  max_target_len=8, lr=3e-3)
    full = train(TrainConfig(output=str(tmp_path / "full"), **common))
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copytree(full / "checkpoint-2", killed / "checkpoint-2")

    def refit(*a, **k):
        raise AssertionError("the start rows were fitted again on resume")

    monkeypatch.setattr(p5x.iteminit, "init_item_embeddings", refit)
    resumed = train(TrainConfig(output=str(killed), resume=True, **common))
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    # throughput.json says what the fit cost each stage (bench/beauty/oneshot.py plans without it)
    fit_s = [json.loads((d / "throughput.json").read_text())["item_init_seconds"] for d in (full, resumed)]
    assert fit_s[0] > 0 and fit_s[1] == 0


def test_a_second_run_loads_the_fitted_rows_from_the_cache(toy_dir, tmp_path, monkeypatch):
    """train.py --item-init markov twice on the same data: the second run reads the first's rows
    from --item-init-cache instead of fitting, and starts from the same rows; off fits every time."""
    import p5x.iteminit

    common = dict(data=str(toy_dir), tasks="sequential", epochs=1, batch_size=16, max_steps=1, save_steps=100,
                  use_cpu=True, vocab_size=300, index="atomic", item_init="markov-untied", output_layer="untied",
                  max_source_len=128, max_target_len=8, lr=1e-9, item_init_cache=str(tmp_path / "cache"))
    first = load_checkpoint(train(TrainConfig(output=str(tmp_path / "a"), **common)))
    assert len(list((tmp_path / "cache" / "item_init").glob("markov-untied-*.safetensors"))) == 1

    def no_fit(*a, **k):
        raise AssertionError("the rows were fitted again")

    monkeypatch.setattr(p5x.iteminit, "fit_markov", no_fit)
    second = load_checkpoint(train(TrainConfig(output=str(tmp_path / "b"), **common)))
    ids = first.tokenizer.convert_tokens_to_ids(sorted(first.index.pieces()))
    for get in ("get_input_embeddings", "get_output_embeddings"):
        a = getattr(first.model.backbone, get)().weight.detach()[ids]
        b = getattr(second.model.backbone, get)().weight.detach()[ids]
        assert torch.allclose(a, b, atol=1e-6), get  # lr 1e-9: one step leaves the start rows
    with pytest.raises(AssertionError, match="fitted again"):
        train(TrainConfig(output=str(tmp_path / "c"), **{**common, "item_init_cache": "off"}))


def _assert_resume_equals_one_run(tmp_path, **cfg):
    """Train `cfg` (save_steps 1) in one go, then again from a copy of its checkpoint-1 alone (a run killed
    after step 1) with --resume: the two final weights must agree."""
    import shutil

    from safetensors.torch import load_file

    full = train(TrainConfig(output=str(tmp_path / "full"), **cfg))
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copytree(full / "checkpoint-1", killed / "checkpoint-1")
    resumed = train(TrainConfig(output=str(killed), resume=True, **cfg))
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_item_warmup_steps_hold_the_item_rows_near_their_start(toy_dir, tmp_path):
    """--item-warmup-steps N scales the item rows' updates by step/N: with N far beyond the run the
    rows barely move while the text-token rows train as usual; without it the item rows move too."""
    common = dict(data=str(toy_dir), tasks="sequential", epochs=1, batch_size=16, max_steps=3, save_steps=100,
                  use_cpu=True, vocab_size=300, index="atomic", item_init="markov", max_source_len=128,
                  max_target_len=8, lr=1e-2, seed=0)

    def rows(out):
        ck = load_checkpoint(out)
        items = ck.tokenizer.convert_tokens_to_ids(sorted(ck.index.pieces()))
        text = sorted(set(range(len(ck.tokenizer))) - set(items))[:200]
        w = ck.model.backbone.get_input_embeddings().weight.detach()
        return w[items], w[text]

    start = rows(train(TrainConfig(output=str(tmp_path / "s"), **{**common, "lr": 1e-12})))
    plain = rows(train(TrainConfig(output=str(tmp_path / "p"), **common)))
    held = rows(train(TrainConfig(output=str(tmp_path / "h"), item_warmup_steps=100_000, **common)))
    moved = lambda a, b: float((a - b).abs().max())  # noqa: E731
    assert moved(plain[0], start[0]) > 1e-3  # the item rows train without the warm-up
    assert moved(held[0], start[0]) < 1e-3 * moved(plain[0], start[0])  # scaled by <= 3/100,000
    assert moved(held[1], start[1]) > 1e-3  # the other rows train as usual
    # resumable: the scale depends on the global step alone (checkpoint-1 resumed equals one run)
    _assert_resume_equals_one_run(tmp_path, item_warmup_steps=2, **{**common, "save_steps": 1})


def test_item_warmup_steps_config_errors():
    with pytest.raises(ConfigError, match="--item-warmup-steps: needs --index atomic"):
        TrainConfig(item_warmup_steps=10).validate()
    with pytest.raises(ConfigError, match="--item-warmup-steps: must be >= 0"):
        TrainConfig(item_warmup_steps=-1, index="atomic").validate()
    with pytest.raises(ConfigError, match="--deepspeed"):
        TrainConfig(item_warmup_steps=10, index="atomic", deepspeed="ds.json").validate()


def test_table_weight_decay_decays_the_token_tables_alone(toy_dir, tmp_path):
    """--table-weight-decay gives the token tables (input embeddings and an untied output layer) a weight
    decay of their own: with a huge --weight-decay and 0 for the tables the transformer's weights shrink
    and the tables keep their scale; the other way round the tables shrink and the transformer does not."""
    common = dict(data=str(toy_dir), tasks="sequential", epochs=1, batch_size=16, max_steps=3, save_steps=100,
                  use_cpu=True, vocab_size=300, index="atomic", output_layer="untied", max_source_len=128,
                  max_target_len=8, lr=1e-2, seed=0)

    def norms(out):
        bb = load_checkpoint(out).model.backbone
        tables = [bb.get_input_embeddings().weight, bb.get_output_embeddings().weight]
        body = [p for n, p in bb.named_parameters() if n.endswith("SelfAttention.q.weight")]
        return [float(t.detach().norm()) for t in tables], [float(p.detach().norm()) for p in body]

    start = norms(train(TrainConfig(output=str(tmp_path / "s"), **{**common, "lr": 1e-12})))
    body_only = norms(train(TrainConfig(output=str(tmp_path / "b"), weight_decay=30.0, table_weight_decay=0.0,
                                        **common)))
    tables_only = norms(train(TrainConfig(output=str(tmp_path / "t"), weight_decay=0.0, table_weight_decay=30.0,
                                          **common)))
    # decoupled decay multiplies a weight by (1 - lr * wd) per step: ~0.7, 0.8, 0.9 over the 3 steps here
    for after, before in zip(body_only[0], start[0]):
        assert after > 0.9 * before  # tables spared
    for after, before in zip(body_only[1], start[1]):
        assert after < 0.7 * before  # transformer decayed
    for after, before in zip(tables_only[0], start[0]):
        assert after < 0.7 * before
    for after, before in zip(tables_only[1], start[1]):
        assert after > 0.9 * before
    # resumable: the param groups are rebuilt the same way, so checkpoint-1 resumed equals one run
    _assert_resume_equals_one_run(tmp_path, weight_decay=0.0, table_weight_decay=30.0,
                                  **{**common, "max_steps": 2, "save_steps": 1})
    with pytest.raises(ConfigError, match="--table-weight-decay: must be >= 0"):
        TrainConfig(table_weight_decay=-0.5).validate()
    with pytest.raises(ConfigError, match="--table-weight-decay: not with --deepspeed"):
        TrainConfig(table_weight_decay=0.0, deepspeed="ds.json").validate()
