"""FID and KID on the host: the Fréchet distance against independent float64 references
(scipy's sqrtm written out, an eigendecomposition, closed forms), including singular and
near-singular covariances; KID against torch-fidelity's values on fixed features
(tests/fixtures/make_kid_reference.py) and a brute-force unbiased MMD."""
import os

import numpy as np
import pytest
import scipy.linalg

from vision_jax import feature_distances as fd
from vision_jax.errors import ConfigError

KID_FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'kid_reference.npz')


def _sqrtm_reference(mu1, s1, mu2, s2) -> float:
  """The textbook formula with scipy's sqrtm in float64, real part."""
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2)
               - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real))


def _eigh_reference(mu1, s1, mu2, s2) -> float:
  """tr (S1 S2)^(1/2) = sum of sqrt of the eigenvalues of S1^(1/2) S2 S1^(1/2) (symmetric
  PSD: eigh, clipped at 0): no non-symmetric square root at all."""
  w, v = np.linalg.eigh(s1)
  root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  lam = np.linalg.eigvalsh(root @ s2 @ root)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2)
               - 2 * np.sum(np.sqrt(np.clip(lam, 0, None))))


def _gaussian_features(rng, n: int, d: int, shift: float = 0.0) -> np.ndarray:
  mixing = rng.standard_normal((d, d)) / np.sqrt(d)
  return rng.standard_normal((n, d)) @ mixing + shift + rng.standard_normal(d)


def test_statistics_are_float64_mean_and_unbiased_covariance():
  x = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32)
  mu, sigma = fd.feature_statistics(x)
  assert mu.dtype == sigma.dtype == np.float64
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(mu, x64.mean(0), rtol=1e-14)
  centred = x64 - x64.mean(0)
  np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-12)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_frechet_distance_of_random_gaussians(seed):
  rng = np.random.default_rng(seed)
  a, b = _gaussian_features(rng, 400, 32), _gaussian_features(rng, 300, 32, shift=0.3)
  (mu1, s1), (mu2, s2) = fd.feature_statistics(a), fd.feature_statistics(b)
  value = fd.frechet_distance(mu1, s1, mu2, s2)
  assert value > 1
  assert value == pytest.approx(_sqrtm_reference(mu1, s1, mu2, s2), rel=1e-10)
  assert value == pytest.approx(_eigh_reference(mu1, s1, mu2, s2), rel=1e-9)
  assert fd.frechet_distance(mu1, s1, mu2, s2, method='eigh') == pytest.approx(value,
                                                                               rel=1e-9)
  for method in ('sqrtm', 'eigh'):
    assert fd.frechet_distance(mu1, s1, mu1, s1, method=method) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_closed_form_for_diagonal_covariances():
  """Diagonal covariances commute: FD = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2."""
  rng = np.random.default_rng(3)
  a, b = rng.uniform(0.1, 3, 20), rng.uniform(0.1, 3, 20)
  mu1, mu2 = rng.standard_normal(20), rng.standard_normal(20)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  for method in ('sqrtm', 'eigh'):
    assert fd.frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method) == \
        pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize('n', [8, 20, 40])
def test_frechet_distance_with_singular_covariances(n):
  """Fewer samples than dimensions (64): both covariances have rank n - 1, as FID on a
  few hundred samples of 2048 features."""
  rng = np.random.default_rng(n)
  a, b = _gaussian_features(rng, n, 64), _gaussian_features(rng, n, 64, shift=0.1)
  (mu1, s1), (mu2, s2) = fd.feature_statistics(a), fd.feature_statistics(b)
  assert np.linalg.matrix_rank(s1) == n - 1
  value = fd.frechet_distance(mu1, s1, mu2, s2)
  assert np.isfinite(value)
  assert value == pytest.approx(_eigh_reference(mu1, s1, mu2, s2), rel=1e-6, abs=1e-6)
  assert value == pytest.approx(fd.frechet_distance(mu1, s1, mu2, s2, method='eigh'),
                                rel=1e-6)


def test_frechet_distance_with_near_singular_covariances():
  """Eigenvalues spread from 1 down to 1e-14 (a near-singular feature covariance)."""
  rng = np.random.default_rng(5)
  d = 48
  q1, _ = np.linalg.qr(rng.standard_normal((d, d)))
  q2, _ = np.linalg.qr(rng.standard_normal((d, d)))
  s1 = (q1 * np.logspace(0, -14, d)) @ q1.T
  s2 = (q2 * np.logspace(0, -14, d)[::-1]) @ q2.T
  s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  value = fd.frechet_distance(mu1, s1, mu2, s2)
  assert value == pytest.approx(_eigh_reference(mu1, s1, mu2, s2), rel=1e-8)
  assert value == pytest.approx(_sqrtm_reference(mu1, s1, mu2, s2), rel=1e-8)
  assert fd.frechet_distance(mu1, s1, mu2, s2, method='eigh') == pytest.approx(value,
                                                                               rel=1e-8)


def test_non_finite_square_root_retries_with_eps_on_the_diagonal(monkeypatch):
  """pytorch-fid's safeguard: when sqrtm(S1 S2) is not finite, the product of
  (S1 + eps I)(S2 + eps I) is used instead."""
  seen = []
  real = fd._sqrtm  # pylint: disable=protected-access

  def fake(matrix):
    seen.append(matrix)
    return np.full_like(matrix, np.inf) if len(seen) == 1 else real(matrix)

  monkeypatch.setattr(fd, '_sqrtm', fake)
  s1, s2 = np.diag([1.0, 2.0, 0.0]), np.diag([0.0, 3.0, 4.0])
  value = fd.frechet_distance(np.zeros(3), s1, np.zeros(3), s2, eps=1e-3)
  np.testing.assert_allclose(seen[1], (s1 + 1e-3 * np.eye(3)) @ (s2 + 1e-3 * np.eye(3)))
  expected = 1 + 2 + 3 + 4 - 2 * np.sum(np.sqrt([1.001 * 0.001, 2.001 * 3.001,
                                                 0.001 * 4.001]))
  assert value == pytest.approx(expected, rel=1e-12)


def test_imaginary_square_root_and_mismatched_shapes_are_errors():
  with pytest.raises(ValueError, match='imaginary component of 1'):
    fd.frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match="method 'svd': use 'sqrtm' or 'eigh'"):
    fd.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method='svd')
  with pytest.raises(ValueError, match='Statistics do not match'):
    fd.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match='non-finite values'):
    fd.feature_statistics(np.array([[1.0, np.nan], [0.0, 1.0]]))


# ----------------------------------------------------------------------------- KID

@pytest.mark.parametrize('other', ['2', '3'])
def test_kernel_distance_equals_torch_fidelity(other):
  """Same subsets (RandomState(seed)), same kernel; torch-fidelity computes in float32 and
  we in float64, hence the tolerance (measured: max |diff| 6.6e-7 over these cases)."""
  with np.load(KID_FIXTURE) as npz:
    ref = dict(npz)
  for i, (subsets, size, seed) in enumerate(ref['settings']):
    mean, std = fd.kernel_distance(ref['features_1'], ref[f'features_{other}'],
                                   subsets=int(subsets), subset_size=int(size),
                                   seed=int(seed))
    assert mean == pytest.approx(ref[f'kid_mean_1_{other}'][i], abs=2e-6)
    assert std == pytest.approx(ref[f'kid_std_1_{other}'][i], abs=2e-6)


def test_unbiased_mmd_against_a_double_loop():
  rng = np.random.default_rng(0)
  x, y = rng.standard_normal((7, 5)), rng.standard_normal((7, 5)) + 0.5
  k = lambda a, b: (a @ b / 5 + 1) ** 3
  m = len(x)
  within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
  cross = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
  expected = within / (m * (m - 1)) - 2 * cross / m ** 2
  got = fd.mmd2_unbiased(fd.polynomial_kernel(x, x), fd.polynomial_kernel(x, y),
                         fd.polynomial_kernel(y, y))
  assert got == pytest.approx(expected, rel=1e-12)


def test_kernel_distance_bad_sizes():
  x = np.ones((10, 4))
  with pytest.raises(ConfigError, match=r'KID subset size 50 is larger than the number of '
                     r'samples \(10 and 10\)'):
    fd.kernel_distance(x, x, subsets=2, subset_size=50)
  with pytest.raises(ValueError, match='4 dimensions and features_2 3'):
    fd.kernel_distance(x, np.ones((10, 3)), subsets=2, subset_size=5)
