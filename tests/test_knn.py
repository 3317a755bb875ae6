"""Weighted k-NN against a brute-force loop reference: random features, k beyond the bank,
padding masks, ties in similarity and in votes, a small temperature, chunked queries."""
import functools
import math

import jax
import numpy as np
import pytest

from vision_jax import knn

_STATIC = ('num_classes', 'k', 'temperature', 'query_chunk')
knn_predict = jax.jit(knn.knn_predict, static_argnames=_STATIC)
knn_accuracy = jax.jit(knn.knn_accuracy, static_argnames=_STATIC)


def _reference(bank, labels, queries, *, num_classes, k, temperature, mask=None):
  """Loops: cosine similarity to every real bank entry, the k most similar (lower index
  first on equal similarity), votes exp(sim / T) per class, the first largest class."""
  unit = lambda v: [x / math.sqrt(sum(y * y for y in v)) for x in v]
  bank = [unit(b) for b in bank.tolist()]
  predictions = []
  for q in queries.tolist():
    q = unit(q)
    sims = [(sum(a * b for a, b in zip(q, bank[j])), j) for j in range(len(bank))
            if mask is None or mask[j]]
    nearest = sorted(sims, key=lambda s: (-s[0], s[1]))[:k]
    votes = [0.0] * num_classes
    for sim, j in nearest:
      votes[int(labels[j])] += math.exp(sim / temperature)
    predictions.append(votes.index(max(votes)))
  return np.array(predictions)


@pytest.mark.parametrize('k,temperature', [(1, 0.1), (7, 0.1), (7, 0.5), (200, 0.1),
                                           (20, 0.01)])
def test_predictions_equal_the_loop_reference(k, temperature):
  rng = np.random.default_rng(k)
  bank = rng.normal(size=(50, 8)).astype(np.float32)
  labels = rng.integers(0, 5, 50)
  queries = (bank[rng.integers(0, 50, 37)] + rng.normal(0, 0.7, (37, 8))).astype(np.float32)
  mask = np.ones(50, bool)
  mask[[3, 17, 40]] = False  # Padding of the bank: never votes.
  got = knn_predict(bank, labels, queries, num_classes=5, k=k, temperature=temperature,
                    bank_mask=mask, query_chunk=16)  # 3 chunks, the last padded.
  want = _reference(bank, labels, queries, num_classes=5, k=k, temperature=temperature,
                    mask=mask)
  np.testing.assert_array_equal(got, want)
  # Without the mask the three entries vote again, and the scale of features is irrelevant.
  got = knn_predict(3 * bank, labels, queries, num_classes=5, k=k, temperature=temperature)
  np.testing.assert_array_equal(
      got, _reference(bank, labels, queries, num_classes=5, k=k, temperature=temperature))


def test_k_beyond_the_bank_lets_every_entry_vote():
  bank = np.array([[1, 0], [0.9, 0.1], [0, 1]], np.float32)
  labels = np.array([0, 0, 1])
  query = np.array([[0.5, 1.0]], np.float32)
  # k=1: the nearest is class 1; k=200 (> 3): two class-0 entries outvote it at T=1.
  assert int(knn_predict(bank, labels, query, num_classes=2, k=1)[0]) == 1
  assert int(knn_predict(bank, labels, query, num_classes=2, k=200, temperature=1.0)[0]) == 0
  assert int(knn_predict(bank, labels, query, num_classes=2, k=200, temperature=0.1)[0]) == 1


def test_ties_take_the_lower_bank_index_then_the_lower_class():
  same = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
  query = np.array([[1.0, 0.1]], np.float32)
  # Equal similarities: k=1 takes the lower bank index.
  assert int(knn_predict(same, np.array([3, 5, 0]), query, num_classes=6, k=1)[0]) == 3
  assert int(knn_predict(same, np.array([5, 3, 0]), query, num_classes=6, k=1)[0]) == 5
  # Equal votes (two identical neighbours of two classes): the lower class.
  assert int(knn_predict(same, np.array([4, 2, 0]), query, num_classes=6, k=2)[0]) == 2
  for labels in ([3, 5, 0], [5, 3, 0], [4, 2, 0]):
    for k in (1, 2):
      want = _reference(same, np.array(labels), query, num_classes=6, k=k, temperature=0.1)
      got = knn_predict(same, np.array(labels), query, num_classes=6, k=k)
      np.testing.assert_array_equal(got, want)


def test_accuracy_counts_only_real_queries():
  rng = np.random.default_rng(0)
  bank = rng.normal(size=(40, 6)).astype(np.float32)
  labels = rng.integers(0, 4, 40)
  queries, query_labels = bank[:10] + 0.01, labels[:10].copy()
  query_labels[:3] = (query_labels[:3] + 1) % 4  # Three wrong labels...
  query_mask = np.ones(10, np.float32)
  query_mask[:2] = 0  # ...two of them padding.
  acc = knn_accuracy(bank, labels, queries, query_labels, num_classes=4, k=1,
                     query_mask=query_mask)
  assert float(acc) == pytest.approx(7 / 8)
  assert float(knn_accuracy(bank, labels, queries, query_labels, num_classes=4,
                            k=1)) == pytest.approx(7 / 10)
  # Unjitted, on numpy arrays, as a script would call it.
  assert float(knn.knn_accuracy(bank, labels, queries, query_labels, num_classes=4,
                                k=1)) == pytest.approx(7 / 10)


def test_bad_arguments():
  bank = np.ones((4, 3), np.float32)
  with pytest.raises(ValueError, match=r'\[M, D\]'):
    knn.knn_predict(bank, np.zeros(4), np.ones((2, 5)), num_classes=2)
  with pytest.raises(ValueError, match='k >= 1'):
    knn.knn_predict(bank, np.zeros(4), np.ones((2, 3)), num_classes=2, k=0)
