"""Distances between two sets of image features: the Fréchet distance (FID when the
features are InceptionV3 pool3's) and the kernel distance (KID), on the host in float64.

- `frechet_distance` (Heusel et al. 2017) between Gaussians fitted to the features:
  |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)). By default (method='sqrtm') exactly as
  pytorch-fid, with its safeguards on the matrix square root: when scipy's `sqrtm` of
  S1 S2 is not finite (a singular product), it is recomputed with eps * I added to both
  covariances; an imaginary part that numerical error leaves on the diagonal
  (|imag| <= 1e-3) is dropped, a larger one is an error. method='eigh' computes the same
  trace as the sum of the square roots of the eigenvalues of the symmetric
  S1^(1/2) S2 S1^(1/2) (similar to S1 S2), clipped at 0: no complex arithmetic, and
  several times faster than sqrtm at Inception's 2048 dimensions.
- `kernel_distance` (Binkowski et al. 2018): the unbiased estimate of the squared MMD with
  the polynomial kernel k(x, y) = (gamma x.y + coef0)^degree (degree 3, gamma 1 / dim,
  coef0 1), averaged over `subsets` random subsets of `subset_size` features from each
  side; returns the mean and standard deviation over subsets, as torch-fidelity's
  `kid_features_to_metric` (same subset draws for the same seed: numpy RandomState(seed),
  choice without replacement, first side then second, per subset).
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
from absl import logging

from vision_jax.errors import ConfigError


def _features(features, name: str) -> np.ndarray:
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f'{name} has shape {x.shape}; expected [num_samples >= 2, dim].')
  if not np.all(np.isfinite(x)):
    raise ValueError(f'{name} holds non-finite values ({int(np.sum(~np.isfinite(x)))} of '
                     f'{x.size}); the feature network or the images are broken.')
  return x


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """(mean [dim], covariance [dim, dim]) of features [num_samples, dim], float64; the
  covariance with the unbiased 1 / (n - 1) normalisation, as pytorch-fid's np.cov."""
  x = _features(features, 'features')
  return x.mean(axis=0), np.cov(x, rowvar=False)


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
  with warnings.catch_warnings():  # Singular inputs are handled by the caller.
    warnings.simplefilter('ignore', scipy.linalg.LinAlgWarning)
    warnings.simplefilter('ignore', RuntimeWarning)
    return scipy.linalg.sqrtm(matrix)


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """tr (S1 S2)^(1/2) from symmetric eigendecompositions (PSD inputs)."""
  w, v = np.linalg.eigh(sigma1)
  root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  eigenvalues = np.linalg.eigvalsh(root @ sigma2 @ root)
  return float(np.sum(np.sqrt(np.clip(eigenvalues, 0, None))))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6,
                     method: str = 'sqrtm') -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

  method: 'sqrtm' (pytorch-fid's computation and safeguards) or 'eigh' (see the module
  docstring). Raises ValueError for mismatched shapes, an unknown method, or (sqrtm) when
  the square root of sigma1 @ sigma2 has an imaginary diagonal part above 1e-3 (a sign of
  broken statistics, not of rounding).
  """
  mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  d = mu1.shape[0]
  if mu1.shape != mu2.shape or sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(f'Statistics do not match: means {mu1.shape} and {mu2.shape}, '
                     f'covariances {sigma1.shape} and {sigma2.shape}; both sides need '
                     'features of the same network and layer.')
  if method not in ('sqrtm', 'eigh'):
    raise ValueError(f"Fréchet distance method {method!r}: use 'sqrtm' or 'eigh'.")
  diff = mu1 - mu2
  traces = diff @ diff + np.trace(sigma1) + np.trace(sigma2)
  if method == 'eigh':
    return float(traces - 2 * _trace_sqrt_product_eigh(sigma1, sigma2))
  covmean = _sqrtm(sigma1 @ sigma2)
  if not np.all(np.isfinite(covmean)):
    logging.warning('Fréchet distance: sqrtm(sigma1 @ sigma2) is not finite (a singular '
                    'product: fewer samples than feature dimensions?); adding %g to the '
                    'diagonal of both covariances.', eps)
    offset = np.eye(d) * eps
    covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f'Fréchet distance: the square root of sigma1 @ sigma2 has an '
                       f'imaginary component of {np.max(np.abs(covmean.imag)):.3g}; the '
                       'covariances are not positive semi-definite (non-finite or '
                       'corrupted features?).')
    covmean = covmean.real
  return float(traces - 2 * np.trace(covmean))


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3,
                      gamma: float | None = None, coef0: float = 1.0) -> np.ndarray:
  """(gamma x y^T + coef0)^degree, gamma defaulting to 1 / dim."""
  gamma = 1.0 / x.shape[1] if gamma is None else gamma
  return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
  """Unbiased squared MMD from m x m kernel matrices: the within-set means leave out the
  diagonal (m (m - 1) terms), the cross term keeps every pair (m^2)."""
  m = k_xx.shape[0]
  within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
  return float(within - 2 * k_xy.sum() / (m * m))


def kernel_distance(features_1, features_2, *, subsets: int = 100, subset_size: int = 1000,
                    degree: int = 3, gamma: float | None = None, coef0: float = 1.0,
                    seed: int = 2020) -> tuple[float, float]:
  """(mean, std) over `subsets` of the unbiased polynomial-kernel MMD^2 between random
  `subset_size`-subsets of the two feature sets [n, dim] (KID on Inception features).

  The defaults are torch-fidelity's (100 subsets of 1000, seed 2020). Raises ConfigError
  when a side has fewer than subset_size features.
  """
  x, y = _features(features_1, 'features_1'), _features(features_2, 'features_2')
  if x.shape[1] != y.shape[1]:
    raise ValueError(f'features_1 has {x.shape[1]} dimensions and features_2 '
                     f'{y.shape[1]}: both sides need features of the same layer.')
  if subsets < 1 or subset_size < 2:
    raise ConfigError(f'KID with subsets={subsets}, subset_size={subset_size}: use at '
                      'least 1 subset of at least 2 samples (torch-fidelity: 100 of 1000).')
  if min(len(x), len(y)) < subset_size:
    raise ConfigError(f'KID subset size {subset_size} is larger than the number of samples '
                      f'({len(x)} and {len(y)}): lower the subset size or compute features '
                      'of more samples.')
  rng = np.random.RandomState(seed)
  values = np.zeros(subsets)
  for i in range(subsets):
    a = x[rng.choice(len(x), subset_size, replace=False)]
    b = y[rng.choice(len(y), subset_size, replace=False)]
    kernel = lambda p, q: polynomial_kernel(p, q, degree, gamma, coef0)
    values[i] = mmd2_unbiased(kernel(a, a), kernel(a, b), kernel(b, b))
  return float(values.mean()), float(values.std())
