"""Weighted k-nearest-neighbour accuracy of frozen features (Wu et al. 2018, as solo-learn).

The evaluation of a self-supervised backbone during pretraining, without training anything:
a memory bank holds the features and labels of the labelled train split; each eval
example is classified by its k most similar bank entries (cosine similarity), each voting
for its class with weight exp(similarity / temperature); the class with the largest sum
wins. Defaults k=200, temperature 0.1 (Wu et al.; solo-learn's defaults).

What evaluation collects: the backbone's pooled features in eval mode
(`models.ssl.pooled_features` / `SSLModel.features`) of every example of the train split,
with the deterministic eval preprocessing, plus their labels and padding mask (the bank),
and the same for the eval split (the queries). Features are L2-normalised here, so raw
features may be passed.

Everything is one jittable function on the device: queries are processed `query_chunk` at
a time (`lax.map`), so memory peaks at query_chunk x bank size similarities, whatever the
number of queries. Under jit over a mesh the bank and queries may be sharded on their first
axis; the program sees global arrays. Ties: among equal similarities the lower bank index
is taken (lax.top_k's order), among equal votes the lower class. With k larger than the
bank, every bank entry votes; masked (padding) bank entries never vote.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vision_jax.losses import l2_normalize


def knn_predict(bank_features: jax.Array, bank_labels: jax.Array, queries: jax.Array, *,
                num_classes: int, k: int = 200, temperature: float = 0.1,
                bank_mask: jax.Array | None = None, query_chunk: int = 256) -> jax.Array:
  """Predicted classes [Q] of `queries` [Q, D] by weighted k-NN over the bank [M, D]
  with integer labels [M]; `bank_mask` [M] (1 = a real example) excludes padding."""
  if bank_features.ndim != 2 or queries.ndim != 2 or (
      bank_features.shape[1] != queries.shape[1]):
    raise ValueError(f'knn_predict takes bank features [M, D] and queries [Q, D], got '
                     f'{bank_features.shape} and {queries.shape}.')
  if k < 1 or temperature <= 0:
    raise ValueError(f'knn_predict needs k >= 1 and temperature > 0, got k={k}, '
                     f'temperature={temperature}.')
  bank, bank_labels = l2_normalize(bank_features), jnp.asarray(bank_labels)
  k = min(k, bank.shape[0])
  valid = (jnp.ones(bank.shape[0], bool) if bank_mask is None
           else jnp.asarray(bank_mask).astype(bool))
  num_queries = queries.shape[0]
  chunk = max(1, min(query_chunk, num_queries))
  padded = -(-num_queries // chunk) * chunk
  q = l2_normalize(jnp.pad(queries, ((0, padded - num_queries), (0, 0))))

  def predict(q_chunk: jax.Array) -> jax.Array:
    sim = jnp.matmul(q_chunk, bank.T, precision=jax.lax.Precision.HIGHEST)
    sim = jnp.where(valid[None, :], sim, -jnp.inf)
    top, index = jax.lax.top_k(sim, k)  # [chunk, k]
    # exp((s - max s) / T): the same argmax as exp(s / T), without overflow at small T.
    best = top[:, :1]
    best = jnp.where(jnp.isfinite(best), best, 0.0)
    weight = jnp.exp((top - best) / temperature)  # 0 for masked entries (-inf).
    votes = jnp.zeros((q_chunk.shape[0], num_classes), jnp.float32)
    votes = votes.at[jnp.arange(q_chunk.shape[0])[:, None], bank_labels[index]].add(weight)
    return jnp.argmax(votes, axis=-1).astype(jnp.int32)

  predictions = jax.lax.map(predict, q.reshape(padded // chunk, chunk, -1))
  return predictions.reshape(-1)[:num_queries]


def knn_accuracy(bank_features: jax.Array, bank_labels: jax.Array, queries: jax.Array,
                 query_labels: jax.Array, *, num_classes: int, k: int = 200,
                 temperature: float = 0.1, bank_mask: jax.Array | None = None,
                 query_mask: jax.Array | None = None, query_chunk: int = 256) -> jax.Array:
  """Fraction of the (unmasked) queries whose k-NN prediction is their label, a scalar."""
  predictions = knn_predict(bank_features, bank_labels, queries, num_classes=num_classes,
                            k=k, temperature=temperature, bank_mask=bank_mask,
                            query_chunk=query_chunk)
  weight = (jnp.ones(queries.shape[0], jnp.float32) if query_mask is None
            else jnp.asarray(query_mask).astype(jnp.float32))
  correct = (predictions == query_labels).astype(jnp.float32)
  return jnp.sum(correct * weight) / jnp.maximum(jnp.sum(weight), 1.0)
