"""One time-based leave-one-out split shared by every prompt family.

Per user, in time order: the last interaction is test, the one before it validation, the rest
train. Users with fewer than MIN_EVAL_LENGTH (3) interactions are too short to split: all their
interactions go to train and they are evaluated on nothing (P5's 5-core data has none; raw review
dumps can). Every family draws its training prompts from `train` only, so a user's validation and
test interactions never reach a training prompt; evaluation on test sees train + validation as
history, evaluation on validation sees train only.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schema import Dataset, Interaction

MIN_EVAL_LENGTH = 3


@dataclass
class Split:
    """train[u]: time-ordered training interactions; valid[u] / test[u]: the held-out one (if any)."""

    train: dict[str, list[Interaction]]
    valid: dict[str, Interaction]
    test: dict[str, Interaction]

    def history(self, user: str, split: str) -> list[Interaction]:
        """Interactions visible before predicting `split` ('train' history is the whole train part)."""
        h = list(self.train.get(user, []))
        if split == "test" and user in self.valid:
            h.append(self.valid[user])
        return h

    def history_ids(self, user: str, split: str) -> list[str]:
        """Raw item ids of `history(user, split)`, oldest first."""
        return [x.item_id for x in self.history(user, split)]

    def eval_users(self, split: str, max_users: int | None = None) -> list[str]:
        """Users with a `split` interaction; with max_users, the first that many by sorted id (the
        subset p5x.evaluate --max-users and p5x.baselines --max-users both score)."""
        users = list(self.valid if split == "valid" else self.test)
        return users if max_users is None else sorted(users)[:max_users]

    def target(self, user: str, split: str) -> Interaction:
        return (self.valid if split == "valid" else self.test)[user]

    def train_items(self) -> set[str]:
        return {x.item_id for xs in self.train.values() for x in xs}

    def user_items(self, user: str) -> set[str]:
        """Every item the user interacted with in any part (used to exclude candidate negatives)."""
        s = {x.item_id for x in self.train.get(user, [])}
        for part in (self.valid, self.test):
            if user in part:
                s.add(part[user].item_id)
        return s


def time_split(ds: Dataset) -> Split:
    train: dict[str, list[Interaction]] = {}
    valid: dict[str, Interaction] = {}
    test: dict[str, Interaction] = {}
    for user, xs in ds.by_user().items():
        if len(xs) < MIN_EVAL_LENGTH:
            train[user] = list(xs)
            continue
        train[user] = list(xs[:-2])
        valid[user] = xs[-2]
        test[user] = xs[-1]
    return Split(train, valid, test)
