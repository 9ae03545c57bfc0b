"""Baselines: classic sequential recommenders (SASRec, GRU4Rec) and in-context learning (icl.py).

The classic ones train with `train_classic` and score with `load_ranker` (see classic.py).
"""

from softrec.baselines.classic import (
    CLASSIC_METHODS,
    item_embeddings,
    load_ranker,
    rank_from_scores,
    train_classic,
)

__all__ = ["CLASSIC_METHODS", "item_embeddings", "load_ranker", "rank_from_scores", "train_classic"]
