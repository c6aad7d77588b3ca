"""Top-k evaluation of recommenders on held-out interactions: recall@k, NDCG@k, popularity.

For each test user, the recommender ranks every item except those the user has in training;
``recall@k`` is the share of the user's held-out items found in the top k, divided by
``min(k, held-out items)`` so a perfect list scores 1 whatever the user's count; ``NDCG@k``
discounts each hit by ``1 / log2(rank + 2)`` and divides by the best possible DCG. Both are
averaged over users. The popularity baseline ranks items by their training count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from tfprod.data.interactions import Interactions
from tfprod.errors import TfprodError

#: ``recommend(user_ids, k, seen) -> (n, k) item ids``.
RecommendFn = Callable[[np.ndarray, int, list[np.ndarray]], np.ndarray]


def recall_ndcg(recommended: np.ndarray, relevant: Sequence[np.ndarray]) -> tuple[np.ndarray,
                                                                                   np.ndarray]:
    """Per-user recall@k and NDCG@k of ``recommended`` ``(n, k)`` lists against ``relevant``
    item sets (one array per user, non-empty)."""
    recommended = np.asarray(recommended)
    n, k = recommended.shape
    if len(relevant) != n:
        raise TfprodError(f"{n} recommendation lists for {len(relevant)} users")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recall, ndcg = np.zeros(n), np.zeros(n)
    for row, (items, truth) in enumerate(zip(recommended, relevant, strict=True)):
        if len(truth) == 0:
            raise TfprodError(f"user row {row} has no relevant items; evaluate users with "
                              "held-out interactions only")
        hits = np.isin(items, truth)
        best = min(k, len(truth))
        recall[row] = hits.sum() / best
        ndcg[row] = (hits * discounts).sum() / discounts[:best].sum()
    return recall, ndcg


def popularity_recommender(train: Interactions) -> RecommendFn:
    """Recommends the items most frequent in ``train`` that a user has not seen."""
    order = np.argsort(-train.item_counts(), kind="stable")

    def recommend(users: np.ndarray, k: int, seen: list[np.ndarray]) -> np.ndarray:
        out = np.empty((len(users), k), np.int64)
        for row, s in enumerate(seen):
            out[row] = order[~np.isin(order, s)][:k] if len(s) else order[:k]
        return out

    return recommend


def model_recommender(model, *, batch_size: int = 1024) -> RecommendFn:
    """``model.recommend`` (a :class:`~tfprod.models.Recommender`) in batches of users."""

    def recommend(users: np.ndarray, k: int, seen: list[np.ndarray]) -> np.ndarray:
        parts = [model.recommend(users[i:i + batch_size], k, seen=seen[i:i + batch_size])[0]
                 for i in range(0, len(users), batch_size)]
        return np.concatenate(parts)

    return recommend


@dataclasses.dataclass(frozen=True)
class RankingResult:
    """Mean recall@k and NDCG@k of one recommender over a group of test users."""

    name: str
    users: int
    recall: float
    ndcg: float


def evaluate_ranking(recommenders: dict[str, RecommendFn], train: Interactions,
                     test: Interactions, *, k: int = 10) -> list[RankingResult]:
    """recall@k and NDCG@k of each recommender, over all test users and over the cold-start
    ones (test users without any training interaction) when there are some.

    Returns:
        One :class:`RankingResult` per recommender (``name``), then one per recommender on the
        cold-start users (``name (cold-start)``).
    """
    seen_all = train.by_user()
    truth_all = test.by_user()
    users = np.array([u for u in range(test.num_users) if len(truth_all[u])], np.int64)
    if len(users) == 0:
        raise TfprodError("the test interactions hold no user; split with test_fraction > 0")
    counts = train.user_counts()
    cold = users[counts[users] == 0]
    results, cold_results = [], []
    for name, recommend in recommenders.items():
        top = recommend(users, k, [seen_all[u] for u in users])
        recall, ndcg = recall_ndcg(top, [truth_all[u] for u in users])
        results.append(RankingResult(name, len(users), float(recall.mean()), float(ndcg.mean())))
        if len(cold):
            is_cold = counts[users] == 0
            cold_results.append(RankingResult(f"{name} (cold-start)", len(cold),
                                              float(recall[is_cold].mean()),
                                              float(ndcg[is_cold].mean())))
    return results + cold_results
