"""The predictor: the network (network.py), what completes it (the stack, each drug's spread, the
new-drug predictor), the classical baselines, ready references, and the Predictor that holds them
and answers (predictor.py).

    from predictor import Predictor
    ranking = Predictor.load().answer(adata, groupby="sample").ranking
"""
from predictor.predictor import Predictor

__all__ = ["Predictor"]
