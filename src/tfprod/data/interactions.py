"""User-item interactions for recommenders: a synthetic set with known structure, MovieLens files.

:func:`synthetic_interactions` draws interactions from a known low-rank preference model with
a popularity skew, at run time (nothing downloaded): user ``u`` picks item ``i`` with
probability proportional to ``exp(strength * <U_u, V_i> + log p_i)``, where ``p_i`` follows a
Zipf law over a random item order. A recommender that recovers ``U`` and ``V`` beats ranking by
popularity; one that learns only popularity does not.

:func:`read_movielens` reads a user's own copy of a MovieLens file in any of its three formats
(``u.data``: tab-separated; ``ratings.dat``: ``::``-separated; ``ratings.csv``: with a header)
and maps the raw user and movie ids to dense indices, keeping the raw ids beside them.

:meth:`Interactions.split` holds out each user's latest interactions (by time; random without
timestamps), the usual protocol for recall@k / NDCG@k.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from tfprod.errors import TfprodError

#: Column layouts of the MovieLens files: separator, whether a header line comes first.
MOVIELENS_FORMATS = {"u.data": ("\t", False), "ratings.dat": ("::", False),
                     "ratings.csv": (",", True)}


@dataclasses.dataclass(frozen=True)
class Interactions:
    """Interactions as parallel arrays of dense user and item indices.

    Attributes:
        users, items: int64 indices in ``[0, num_users)`` and ``[0, num_items)``.
        ratings: float32 explicit ratings, or None for implicit feedback only.
        timestamps: int64 times (for time-ordered splits), or None.
        num_users, num_items: sizes of the id spaces (the embedding tables).
        user_ids, item_ids: the raw id of each index (from a file), or None.
    """

    users: np.ndarray
    items: np.ndarray
    num_users: int
    num_items: int
    ratings: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.users)
        for name in ("items", "ratings", "timestamps"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise TfprodError(f"interactions: {name} has {len(value)} entries, users has "
                                  f"{n}; pass one entry per interaction")
        for name, ids, size in (("users", self.users, self.num_users),
                                ("items", self.items, self.num_items)):
            if len(ids) and (ids.min() < 0 or ids.max() >= size):
                raise TfprodError(f"interactions: {name} range over [{ids.min()}, {ids.max()}]; "
                                  f"expected indices in [0, {size})")

    def __len__(self) -> int:
        return len(self.users)

    def _take(self, mask: np.ndarray) -> Interactions:
        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[mask]

        return dataclasses.replace(self, users=self.users[mask], items=self.items[mask],
                                   ratings=pick(self.ratings), timestamps=pick(self.timestamps))

    def item_counts(self) -> np.ndarray:
        """Interactions per item (``num_items`` int64 counts)."""
        return np.bincount(self.items, minlength=self.num_items).astype(np.int64)

    def user_counts(self) -> np.ndarray:
        """Interactions per user (``num_users`` int64 counts)."""
        return np.bincount(self.users, minlength=self.num_users).astype(np.int64)

    def by_user(self) -> list[np.ndarray]:
        """The distinct items of each user, one sorted array per user index."""
        order = np.lexsort((self.items, self.users))
        users, items = self.users[order], self.items[order]
        bounds = np.searchsorted(users, np.arange(self.num_users + 1))
        return [np.unique(items[bounds[u]:bounds[u + 1]]) for u in range(self.num_users)]

    def split(self, test_fraction: float = 0.2, *, cold_users: float = 0.0,
              seed: int = 0) -> tuple[Interactions, Interactions]:
        """Holds out each user's latest ``test_fraction`` of interactions (at least one).

        Users with a single interaction stay in training. Without timestamps the held-out
        interactions are drawn at random.

        Args:
            test_fraction: share of each user's interactions held out, in (0, 1).
            cold_users: share of users held out entirely (cold-start users: none of their
                interactions is in training).
            seed: random draws (ties in time, cold users, splits without timestamps).

        Returns:
            ``(train, test)`` over the same id spaces.
        """
        if not 0 < test_fraction < 1:
            raise TfprodError(f"test_fraction={test_fraction}; expected a share in (0, 1)")
        if not 0 <= cold_users < 1:
            raise TfprodError(f"cold_users={cold_users}; expected a share in [0, 1)")
        rng = np.random.default_rng(seed)
        order_key = (self.timestamps if self.timestamps is not None
                     else rng.permutation(len(self)))
        order = np.lexsort((rng.random(len(self)), order_key, self.users))
        users = self.users[order]
        counts = np.bincount(users, minlength=self.num_users)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(len(users)) - starts[users]  # position within its user, oldest first
        held = np.where(counts > 1, np.maximum(1, np.floor(counts * test_fraction)), 0)
        test = np.zeros(len(self), bool)
        test[order] = rank >= counts[users] - held[users]
        if cold_users:
            active = np.flatnonzero(counts > 0)
            cold = rng.choice(active, size=int(round(len(active) * cold_users)), replace=False)
            test |= np.isin(self.users, cold)
        return self._take(~test), self._take(test)


@dataclasses.dataclass(frozen=True)
class SyntheticInteractions(Interactions):
    """:class:`Interactions` drawn from a known model, with that model's parameters.

    Attributes:
        user_factors, item_factors: the true low-rank preferences (``rank`` columns).
        popularity: each item's share of the popularity prior (sums to 1).
    """

    user_factors: np.ndarray | None = None
    item_factors: np.ndarray | None = None
    popularity: np.ndarray | None = None


def synthetic_interactions(
    num_users: int = 2000,
    num_items: int = 1000,
    *,
    rank: int = 8,
    per_user: int = 30,
    strength: float = 3.0,
    popularity_exponent: float = 1.0,
    seed: int = 0,
) -> SyntheticInteractions:
    """Interactions with a known low-rank structure and a popularity skew.

    Each user draws a number of distinct items (geometric around ``per_user``, at least 3,
    so a few users are very active) without replacement, with probabilities proportional to
    ``exp(strength * <U_u, V_i> + log p_i)``; ``U`` and ``V`` have normal entries scaled so
    that ``<U_u, V_i>`` has unit variance, ``p_i`` is Zipf(``popularity_exponent``) over a random
    order of the items. Ratings (1 to 5, centred on 3) grow with the same preference, plus a
    leniency per user, a quality per item and noise; timestamps are a random order of all
    interactions.

    Args:
        num_users, num_items: sizes of the id spaces.
        rank: dimension of the true preferences.
        per_user: mean interactions per user.
        strength: weight of the preferences against the popularity prior (0: popularity only).
        popularity_exponent: Zipf exponent of the popularity prior (0: uniform).
        seed: everything is drawn from this seed.
    """
    for name, value in (("num_users", num_users), ("num_items", num_items), ("rank", rank),
                        ("per_user", per_user)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TfprodError(f"{name}={value!r}; expected a positive integer")
    if per_user > num_items // 2:
        raise TfprodError(f"per_user={per_user} with num_items={num_items}; expected at most "
                          "half the items per user, so held-out items remain to be found")
    rng = np.random.default_rng(seed)
    # Entries scaled by rank**-0.25 each: the true affinity <U_u, V_i> has unit variance.
    user_factors = rng.standard_normal((num_users, rank)) / rank ** 0.25
    item_factors = rng.standard_normal((num_items, rank)) / rank ** 0.25
    popularity = 1.0 / np.arange(1, num_items + 1) ** popularity_exponent
    popularity = rng.permutation(popularity / popularity.sum())
    counts = np.clip(3 + rng.geometric(1.0 / max(per_user - 2, 1), size=num_users), 3,
                     num_items // 2)
    users, items, ratings = [], [], []
    prior = np.log(popularity)
    chunk = max(1, 2_000_000 // num_items)
    for start in range(0, num_users, chunk):
        stop = min(start + chunk, num_users)
        affinity = user_factors[start:stop] @ item_factors.T
        logits = strength * affinity + prior
        # Gumbel top-k: the k largest of logits + Gumbel noise are a draw without replacement.
        keys = logits + rng.gumbel(size=logits.shape)
        order = np.argsort(-keys, axis=1)
        for row in range(stop - start):
            chosen = order[row, :counts[start + row]]
            users.append(np.full(len(chosen), start + row))
            items.append(chosen)
            ratings.append(affinity[row, chosen])
    users_a, items_a = np.concatenate(users).astype(np.int64), np.concatenate(items)
    affinity_a = np.concatenate(ratings)
    # Ratings: the preference among the chosen items, a user's leniency and an item's
    # quality, plus noise (every part is something a model with biases can learn, but noise).
    user_bias, item_bias = rng.normal(0, 0.5, num_users), rng.normal(0, 0.5, num_items)
    scaled = (3.0 + (affinity_a - affinity_a.mean()) / affinity_a.std() + user_bias[users_a]
              + item_bias[items_a] + rng.normal(0, 0.5, len(affinity_a)))
    return SyntheticInteractions(
        users=users_a, items=items_a.astype(np.int64), num_users=num_users,
        num_items=num_items, ratings=np.clip(np.round(scaled), 1, 5).astype(np.float32),
        timestamps=rng.permutation(len(users_a)).astype(np.int64),
        user_factors=user_factors.astype(np.float32),
        item_factors=item_factors.astype(np.float32), popularity=popularity)


def _movielens_format(path: str) -> tuple[str, bool]:
    name = os.path.basename(path)
    if name in MOVIELENS_FORMATS:
        return MOVIELENS_FORMATS[name]
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    if "::" in first:
        return "::", False
    if "\t" in first:
        return "\t", False
    if "," in first:
        return ",", not first.split(",")[0].strip().lstrip("-").isdigit()
    raise TfprodError(f"{path}: not a MovieLens ratings file; expected u.data (tab-separated), "
                      "ratings.dat (user::movie::rating::time) or ratings.csv "
                      "(userId,movieId,rating,timestamp)")


def read_movielens(path: str | os.PathLike) -> Interactions:
    """A MovieLens ratings file as :class:`Interactions` (raw ids kept in ``user_ids`` /
    ``item_ids``).

    Args:
        path: ``u.data`` (ml-100k), ``ratings.dat`` (ml-1m, ml-10m) or ``ratings.csv``
            (ml-latest, ml-25m), or a folder holding one of them. Other names are recognised
            by their first line.

    Raises:
        TfprodError: no such file, an unknown format, a line without user, movie and rating.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        found = [os.path.join(path, n) for n in MOVIELENS_FORMATS
                 if os.path.isfile(os.path.join(path, n))]
        if not found:
            raise TfprodError(f"{path} holds none of {sorted(MOVIELENS_FORMATS)}; point at the "
                              "ratings file of your MovieLens copy")
        path = found[0]
    if not os.path.isfile(path):
        raise TfprodError(f"{path}: no such MovieLens ratings file")
    separator, header = _movielens_format(path)
    users, items, ratings, times = [], [], [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        if header:
            f.readline()
        for number, line in enumerate(f, start=2 if header else 1):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split(separator)
            try:
                users.append(int(fields[0]))
                items.append(int(fields[1]))
                ratings.append(float(fields[2]))
                times.append(int(float(fields[3])) if len(fields) > 3 else 0)
            except (ValueError, IndexError):
                raise TfprodError(f"{path} line {number}: {line.strip()[:80]!r}; expected "
                                  f"user{separator}movie{separator}rating[{separator}"
                                  "timestamp]") from None
    if not users:
        raise TfprodError(f"{path} holds no ratings")
    user_ids, user_index = np.unique(np.array(users, np.int64), return_inverse=True)
    item_ids, item_index = np.unique(np.array(items, np.int64), return_inverse=True)
    return Interactions(users=user_index.astype(np.int64), items=item_index.astype(np.int64),
                        num_users=len(user_ids), num_items=len(item_ids),
                        ratings=np.array(ratings, np.float32),
                        timestamps=np.array(times, np.int64), user_ids=user_ids,
                        item_ids=item_ids)
