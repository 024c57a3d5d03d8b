import torch
from torch.nn import functional as F

import hessnb


def make_operator(tiny_network, tiny_batches, cache, kind="cnn", batchnorm=True):
    model = tiny_network(kind, batchnorm)
    return model, hessnb.HessianOperator(
        model, F.cross_entropy, tiny_batches(kind), bn_mode="train", graph_cache=cache
    )


def test_cached_products_equal_fresh_ones(tiny_network, tiny_batches):
    _, fresh = make_operator(tiny_network, tiny_batches, False)
    _, cached = make_operator(tiny_network, tiny_batches, True)
    vectors = torch.randn(fresh.n_params, 3, dtype=torch.float64)
    expected = fresh.matmat(vectors)
    with cached.reuse_graphs():
        for _ in range(3):  # first pass fills the cache, later passes reuse it
            torch.testing.assert_close(cached.matmat(vectors), expected, rtol=1e-12, atol=1e-14)
        info = cached.graph_cache_info()
        assert info["active"] and info["batches"] == 3 and info["bytes"] > 0
        assert cached.data_passes() == 3  # two at construction, one to fill the cache
        torch.testing.assert_close(cached.gradient(), fresh.gradient(), rtol=1e-12, atol=1e-14)
        assert cached.evaluate() == fresh.evaluate()
    assert cached.graph_cache_info()["batches"] == 0  # released on leaving the block


def test_no_reuse_outside_the_block(tiny_network, tiny_batches):
    # .data changes bump no version counter, so graphs are only kept inside the block
    _, op = make_operator(tiny_network, tiny_batches, True)
    op.matvec(torch.randn(op.n_params, dtype=torch.float64))
    assert op.graph_cache_info()["batches"] == 0


def test_cache_is_dropped_when_parameters_change(tiny_network, tiny_batches):
    model, op = make_operator(tiny_network, tiny_batches, True)
    v = torch.randn(op.n_params, dtype=torch.float64)
    with op.reuse_graphs():
        before = op.matvec(v)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.5)
        assert not op.graph_cache_info()["active"]
        with torch.no_grad():
            for p in model.parameters():
                p.div_(1.5)
        after = op.matvec(v)  # recomputed from the data, equal up to rounding
    torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-12)


def test_cache_gives_up_over_budget(tiny_network, tiny_batches):
    _, op = make_operator(tiny_network, tiny_batches, 1)  # one byte: nothing fits
    v = torch.randn(op.n_params, dtype=torch.float64)
    _, fresh = make_operator(tiny_network, tiny_batches, False)
    with op.reuse_graphs():
        torch.testing.assert_close(op.matvec(v), fresh.matvec(v), rtol=1e-12, atol=1e-14)
        info = op.graph_cache_info()
        assert info["gave_up"] and info["batches"] == 0


def test_auto_cache_only_for_in_memory_batches(tiny_network, tiny_batches):
    model = tiny_network("mlp", False)
    batches = tiny_batches("mlp")
    assert hessnb.HessianOperator(model, F.cross_entropy, batches).graph_cache_info()["enabled"]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(
            torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
        ),
        batch_size=10,
    )
    assert not hessnb.HessianOperator(model, F.cross_entropy, loader).graph_cache_info()["enabled"]


def test_optimizer_step_inside_the_block_rebuilds_the_graphs(tiny_network, tiny_batches):
    model, op = make_operator(tiny_network, tiny_batches, True)
    v = torch.randn(op.n_params, dtype=torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with op.reuse_graphs():
        op.matvec(v)
        model.zero_grad()
        F.cross_entropy(model(tiny_batches("cnn")[0][0]), tiny_batches("cnn")[0][1]).backward()
        optimizer.step()
        moved = op.matvec(v)
    _, fresh = make_operator(lambda *a: model, tiny_batches, False)
    torch.testing.assert_close(moved, fresh.matvec(v), rtol=1e-12, atol=1e-14)


def test_bad_cache_setting(tiny_network, tiny_batches):
    import pytest

    with pytest.raises(ValueError, match="graph_cache"):
        hessnb.HessianOperator(
            tiny_network("mlp", False),
            F.cross_entropy,
            tiny_batches("mlp"),
            graph_cache="sometimes",
        )
