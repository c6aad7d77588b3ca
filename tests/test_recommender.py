"""The recommender: interaction data, the UserItemEmbedding layer, training for implicit
feedback and ratings, top-k against popularity, cold start, and the exported signatures."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfprod.data.interactions import Interactions, read_movielens, synthetic_interactions
from tfprod.errors import TfprodError
from tfprod.models import (
    Recommender,
    UserItemEmbedding,
    evaluate_ranking,
    model_recommender,
    popularity_recommender,
    recall_ndcg,
    train_recommender,
)


@pytest.fixture(scope="module")
def trained():
    """A recommender trained on 800 users x 400 items (about 5 s), with its split."""
    data = synthetic_interactions(800, 400, per_user=20, seed=0)
    train, test = data.split(0.2, cold_users=0.05, seed=0)
    model = train_recommender(train, epochs=6, batch_size=256, dim=16, l2=3e-2)
    return data, train, test, model


# ------------------------------------------------------------------------------ data


def test_synthetic_interactions_have_a_popularity_skew_and_known_factors():
    data = synthetic_interactions(500, 300, rank=4, seed=1)
    assert data.user_factors.shape == (500, 4) and data.item_factors.shape == (300, 4)
    flat = synthetic_interactions(500, 300, rank=4, popularity_exponent=0.0, seed=1)

    def top_share(d):  # the share of all interactions on the top 10% of items
        counts = np.sort(d.item_counts())[::-1]
        return counts[:30].sum() / counts.sum()

    assert top_share(data) > 1.25 * top_share(flat)
    # The counts follow the known popularity prior.
    counts = data.item_counts()
    assert np.corrcoef(np.log(counts + 1), np.log(data.popularity))[0, 1] > 0.5
    assert len(set(zip(data.users.tolist(), data.items.tolist(), strict=True))) == len(data)
    assert set(np.unique(data.ratings)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    again = synthetic_interactions(500, 300, rank=4, seed=1)
    np.testing.assert_array_equal(again.items, data.items)


def test_split_holds_out_each_users_latest_interactions_and_cold_users():
    users = np.repeat(np.arange(4), 5)
    data = Interactions(users=users, items=np.tile(np.arange(5), 4), num_users=4, num_items=5,
                        timestamps=np.tile(np.arange(5)[::-1], 4))
    train, test = data.split(0.4)
    # The latest two of five (timestamps 4 and 3) are items 0 and 1 of every user.
    assert sorted(test.items.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len(train) == 12
    train, test = data.split(0.2, cold_users=0.5, seed=0)
    cold = set(test.users.tolist()) - set(train.users.tolist())
    assert len(cold) == 2 and all((test.users == u).sum() == 5 for u in cold)


@pytest.mark.parametrize("name,text", [
    ("u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t5\t881250950\n"),
    ("ratings.dat", "196::242::3::881250949\n186::302::3::891717742\n196::302::5::881250950\n"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n196,242,3.0,881250949\n186,302,3.0,"
                    "891717742\n196,302,5.0,881250950\n"),
])
def test_movielens_files_in_each_format(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    data = read_movielens(tmp_path)  # the folder: its ratings file is found
    assert (data.num_users, data.num_items) == (2, 2)
    assert data.user_ids.tolist() == [186, 196] and data.item_ids.tolist() == [242, 302]
    assert data.users.tolist() == [1, 0, 1] and data.items.tolist() == [0, 1, 1]
    assert data.ratings.tolist() == [3.0, 3.0, 5.0]


def test_movielens_bad_line_names_the_line(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("1\t2\t3\t4\nnot a rating line\n")
    with pytest.raises(TfprodError, match="line 2"):
        read_movielens(path)


# ------------------------------------------------------------------------------ layer


def test_embedding_layer_round_trips_config_and_keras_file(tmp_path):
    layer = UserItemEmbedding(20, 10, dim=4, item_features=3, oov="reserved", name="ui")
    layer.set_item_features(np.eye(10, 3, dtype=np.float32))
    clone = UserItemEmbedding.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()

    users = keras.Input((), dtype="int64", name="user_id")
    items = keras.Input((), dtype="int64", name="item_id")
    model = keras.Model({"user_id": users, "item_id": items},
                        layer({"user_id": users, "item_id": items}))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    x = {"user_id": np.array([0, 5, 19]), "item_id": np.array([1, 2, 9])}
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    restored = loaded.get_layer("ui")
    np.testing.assert_array_equal(restored.item_feature_matrix.numpy()[:10],
                                  np.eye(10, 3, dtype=np.float32))


def test_out_of_vocabulary_ids_read_the_reserved_zero_row():
    layer = UserItemEmbedding(5, 4, dim=3)
    layer.build()
    layer.item_bias.assign(np.array([1, 2, 3, 4, 99], np.float32))  # last: the OOV row
    layer.global_bias.assign(0.5)
    scores = layer({"user_id": np.array([-1, 5, 10**12]), "item_id": np.array([0, 2, 7])})
    # Unknown users have a zero vector and bias; an unknown item has a zero vector and the
    # reserved row's bias. No index error either way.
    np.testing.assert_allclose(scores.numpy(), [1.5, 3.5, 99.5])


def test_oov_error_policy_names_the_id():
    layer = UserItemEmbedding(5, 4, dim=3, oov="error")
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"user_id \[7\] is outside the table \[0, 5\)"):
        layer({"user_id": np.array([1, 7]), "item_id": np.array([0, 1])})


def test_item_side_features_give_a_new_item_a_vector():
    layer = UserItemEmbedding(3, 4, dim=2, item_features=2)
    layer.build()
    layer.item_table.assign(np.zeros((5, 2), np.float32))
    layer.item_kernel.assign(np.array([[1.0, 0.0], [0.0, 1.0]], np.float32))
    layer.user_table.assign(np.array([[1, 1], [0, 0], [0, 0], [0, 0]], np.float32))
    layer.set_item_features(np.array([[0, 0], [2, 0], [0, 3], [1, 1]], np.float32))
    scores = layer({"user_id": np.zeros(4, np.int64), "item_id": np.arange(4)})
    np.testing.assert_allclose(scores.numpy(), [0, 2, 3, 2])
    with pytest.raises(TfprodError, match=r"takes \(4, 2\)"):
        layer.set_item_features(np.zeros((4, 3)))


@pytest.mark.parametrize("kwargs,match", [
    ({"num_users": 0, "num_items": 3}, "num_users=0"),
    ({"num_users": 3, "num_items": 3, "oov": "hash"}, "oov='hash'"),
])
def test_embedding_layer_refuses_bad_arguments(kwargs, match):
    with pytest.raises(TfprodError, match=match):
        UserItemEmbedding(**kwargs)


# ------------------------------------------------------------------------------ metrics


def test_recall_and_ndcg_by_hand():
    recall, ndcg = recall_ndcg(np.array([[5, 1, 7], [2, 3, 4]]), [np.array([1, 9]),
                                                                   np.array([8])])
    assert recall.tolist() == [0.5, 0.0]
    # One hit at rank 2 of an ideal list of two hits: (1/log2(3)) / (1 + 1/log2(3)).
    assert ndcg[0] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))
    assert ndcg[1] == 0.0


def test_blocked_top_k_equals_top_k():
    from tfprod.models.recommender import top_k_blocked

    x = tf.constant(np.random.default_rng(0).normal(size=(4, 10_000)).astype(np.float32))
    for k in (1, 10, 40, 79, 100):  # 79 blocks of 128: k = 100 takes the plain path
        values, ids = top_k_blocked(x, tf.constant(k, tf.int64))
        want = tf.math.top_k(x, k)
        np.testing.assert_array_equal(ids.numpy(), want.indices.numpy())
        np.testing.assert_array_equal(values.numpy(), want.values.numpy())


# ------------------------------------------------------------------------------ training


def test_implicit_model_doubles_popularitys_recall(trained):
    _, train, test, model = trained
    results = {r.name: r for r in evaluate_ranking(
        {"model": model_recommender(model), "popularity": popularity_recommender(train)},
        train, test, k=10)}
    assert results["model"].recall >= 2 * results["popularity"].recall, results
    assert results["model"].ndcg > results["popularity"].ndcg
    # Cold-start users get exactly the popularity ranking.
    cold_model, cold_pop = results["model (cold-start)"], results["popularity (cold-start)"]
    assert cold_model.users > 0 and cold_model.recall == cold_pop.recall


def test_recommend_excludes_seen_items_and_falls_back_to_popularity(trained):
    _, train, _, model = trained
    seen = train.by_user()
    ids, scores = model.recommend([3, 3], k=10, seen=[[], seen[3]])
    assert not np.isin(ids[1], seen[3]).any()
    assert np.all(np.diff(scores, axis=1) <= 0)
    cold = int(np.flatnonzero(train.user_counts() == 0)[0])
    popular = popularity_recommender(train)(np.array([0]), 10, [np.array([], np.int64)])[0]
    for user in (cold, -1, 10**9):  # untrained, negative, outside the table
        np.testing.assert_array_equal(model.recommend([user], 10)[0][0], popular)


def test_ratings_objective_beats_the_global_mean():
    data = synthetic_interactions(400, 200, per_user=20, seed=2)
    train, test = data.split(0.2, seed=2)
    model = train_recommender(train, objective="ratings", epochs=12, batch_size=256, l2=0.3,
                              learning_rate=1e-2)
    predicted = model.predict({"user_id": test.users, "item_id": test.items}, verbose=0)
    rmse = np.sqrt(np.mean((predicted - test.ratings) ** 2))
    baseline = np.sqrt(np.mean((train.ratings.mean() - test.ratings) ** 2))
    assert rmse < 0.8 * baseline


def test_recommender_round_trips_through_a_keras_file(trained, tmp_path):
    _, _, _, model = trained
    model.save(tmp_path / "rec.keras")
    loaded = keras.saving.load_model(tmp_path / "rec.keras")
    assert isinstance(loaded, Recommender) and loaded.get_config() == model.get_config()
    users, seen = [0, 5, 10**6], [[1, 2], [], [3]]
    for got, want in zip(loaded.recommend(users, 7, seen=seen), model.recommend(users, 7,
                                                                                seen=seen),
                         strict=True):
        np.testing.assert_array_equal(got, want)


def test_bad_recommend_arguments_are_one_line_errors(trained):
    model = trained[3]
    with pytest.raises(TfprodError, match="k=0"):
        model.recommend([1], 0)
    with pytest.raises(TfprodError, match="seen has 1 lists for 2 users"):
        model.recommend([1, 2], 5, seen=[[1]])
    with pytest.raises(TfprodError, match="objective='pairwise'"):
        Recommender(3, 3, objective="pairwise")


# ------------------------------------------------------------------------------ export


def test_exported_signatures_equal_the_model(trained, tmp_path):
    from tfprod.export.recommender import export_recommender

    _, train, _, model = trained
    result = export_recommender(model, tmp_path / "rec", k=5, reference=train)
    assert set(result.endpoints) == {"serving_default", "recommend"}
    assert set(result.endpoints["recommend"]["inputs"]) == {"user_id", "seen.values",
                                                            "seen.row_lengths"}
    assert result.endpoints["recommend"]["outputs"]["item_ids"]["shape"] == [None, 5]
    assert result.warmup_requests > 0
    loaded = tf.saved_model.load(result.path)
    users = np.array([0, 7, -4], np.int64)
    out = loaded.signatures["recommend"](**{
        "user_id": tf.constant(users), "seen.values": tf.constant([4, 9, 11], tf.int64),
        "seen.row_lengths": tf.constant([2, 0, 1], tf.int64)})
    ids, scores = model.recommend(users, 5, seen=[[4, 9], [], [11]])
    np.testing.assert_array_equal(out["item_ids"].numpy(), ids)
    np.testing.assert_allclose(out["scores"].numpy(), scores, rtol=1e-6)
    pairs = loaded.signatures["serving_default"](user_id=tf.constant(users),
                                                 item_id=tf.constant([1, 2, 3], tf.int64))
    np.testing.assert_allclose(pairs["score"].numpy(), model.predict(
        {"user_id": users, "item_id": np.array([1, 2, 3])}, verbose=0), rtol=1e-5)
