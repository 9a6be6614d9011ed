"""Alignment: profiles of another platform brought into a bulk model's training domain."""
import numpy as np

from predictor.align import align, quantiles


def test_alignment_takes_the_training_quantiles_then_centres_each_gene_on_the_files_own_mean():
    reference = {"mean": np.array([10.0, 20.0, 30.0, 40.0, 5.0]), "sd": np.ones(5), "profiles": 3}
    found = np.array([True, True, True, True, False])
    values = np.array([[3.0, 1.0, 2.0, 2.0, 99.0],     # a tie shares the mean of its two quantiles
                       [0.5, 0.7, 0.6, 0.9, -1.0]])
    q = quantiles(values, found, reference)
    assert q[0].tolist() == [40.0, 10.0, 25.0, 25.0, 5.0]
    assert q[1].tolist() == [10.0, 30.0, 20.0, 40.0, 5.0]      # the gene absent from the file: its mean
    got = align(values, found, reference)              # the groups' mean set at the training mean
    assert got.tolist() == [[25.0, 10.0, 32.5, 32.5, 5.0], [-5.0, 30.0, 27.5, 47.5, 5.0]]
    assert np.allclose(got[:, found].mean(0), reference["mean"][found])
    assert align(values[:1], found, reference).tolist() == q[:1].tolist()   # one group: quantiles
    assert align(values, np.zeros(5, bool), reference).tolist() == [reference["mean"].tolist()] * 2
