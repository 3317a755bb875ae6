"""A stand-in for `pt_inception-2015-12-05-6726825d.pth` (not downloadable here): pytorch-fid's
FID InceptionV3 (`pytorch_fid.inception.fid_inception_v3()`) with random weights drawn after
torch.manual_seed(SEED), saved as that file is (its state dict), to run Inception FID in the
training loop end to end. Runs in the torch venv:

  /work/torchenv/bin/python bench/gan_inception_random_weights.py /tmp/vision_jax/pt_inception-random
  python -m vision_jax.convert inception --weights /tmp/vision_jax/pt_inception-random.safetensors \
      --output /tmp/vision_jax/fid_inception_random
  python -m vision_jax.main --config configs/digits_dcgan.py --workdir W --config.train.steps=20 \
      --config.train.eval_every=10 "--config.dataset.eval_splits=('test[:64]',)" \
      --config.task.fid_inception=/tmp/vision_jax/fid_inception_random

Writes PREFIX.pth (torch.save of the state dict), PREFIX.safetensors (the same tensors, read
by the converter without torch) and PREFIX_check.npz: four random 32x32 RGB uint8 images and
their pool3 features from pytorch-fid's own `InceptionV3` wrapper loading PREFIX.pth (resize
to 299, [0, 1] -> [-1, 1]), to compare with the converted network. The published file's
download inside fid_inception_v3() is skipped. Weights: convs He-normal, BatchNorm weight
U(0.5, 1.5), bias and running mean N(0, 0.2^2), running var U(0.5, 2); torch's default
initialisation gives pool3 features of ~1e-8 and an FID of ~1e-12 for any two sets.
FID values on these weights mean nothing beyond the plumbing.
"""
from __future__ import annotations

import sys

import numpy as np
import safetensors.torch
import torch
from pytorch_fid import inception as pytorch_fid_inception


def random_fid_inception(seed: int) -> torch.nn.Module:
  """fid_inception_v3() without the published weights, then random weights."""
  torch.manual_seed(seed)
  download, load = pytorch_fid_inception.load_state_dict_from_url, torch.nn.Module.load_state_dict
  pytorch_fid_inception.load_state_dict_from_url = lambda *args, **kwargs: None
  torch.nn.Module.load_state_dict = lambda self, state, *args, **kwargs: None
  try:
    net = pytorch_fid_inception.fid_inception_v3()
  finally:
    pytorch_fid_inception.load_state_dict_from_url = download
    torch.nn.Module.load_state_dict = load
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.Conv2d):
        torch.nn.init.kaiming_normal_(module.weight, nonlinearity='relu')
      elif isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.2)
        module.running_mean.normal_(0.0, 0.2)
        module.running_var.uniform_(0.5, 2.0)
  return net


def pool3_features(pth: str, images: np.ndarray) -> np.ndarray:
  """pytorch-fid's InceptionV3 wrapper (block 3: pool3) on uint8 NHWC images, with `pth`."""
  download = pytorch_fid_inception.load_state_dict_from_url
  pytorch_fid_inception.load_state_dict_from_url = lambda *args, **kwargs: torch.load(
      pth, weights_only=True)
  try:
    model = pytorch_fid_inception.InceptionV3([3], resize_input=True, normalize_input=True,
                                              use_fid_inception=True).eval()
  finally:
    pytorch_fid_inception.load_state_dict_from_url = download
  with torch.no_grad():
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return model(x)[0][:, :, 0, 0].numpy()


def main(prefix: str, seed: int = 0) -> None:
  state = random_fid_inception(seed).state_dict()
  torch.save(state, prefix + '.pth')
  safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()},
                              prefix + '.safetensors')
  images = np.random.default_rng(seed).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
  features = pool3_features(prefix + '.pth', images)
  np.savez(prefix + '_check.npz', images=images, features=features)
  print(f'{len(state)} tensors, {sum(v.numel() for v in state.values()):,} numbers; pool3 '
        f'features of 4 images: mean {features.mean():.4f}, std {features.std():.4f}')


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
