"""Per-image cost, one thread, of the JPEG decode + inception crop + resize alternatives
behind vision_jax/data/decode.py and preprocess.py: PIL (with and without `draft`),
OpenCV, simplejpeg, and ours. Run through `bench/input_pipeline.py --cases decoders`.
"""
from __future__ import annotations

import statistics
import sys
import time


def compare(data: list[bytes], out: dict, repo: str) -> None:
  """Times each decoder over the JPEG bytes `data` (median of 3 passes); ms per image
  into `out` and printed."""
  # pylint: disable=g-import-not-at-top
  import io
  import cv2
  import numpy as np
  import simplejpeg
  from PIL import Image
  cv2.setNumThreads(1)
  sys.path.insert(0, repo)
  from vision_jax.data import preprocess

  def box(height, width, i):
    return preprocess.inception_box(height, width, np.random.default_rng(i))

  def pil(d, i, draft):
    with Image.open(io.BytesIO(d)) as im:
      width, height = im.size
      l, t, r, b = box(height, width, i)
      reduction = 1
      if draft:  # The largest power-of-2 reduction keeping the crop >= 224 pixels.
        want = next(f for f in (8, 4, 2, 1) if min(r - l, b - t) / f >= 224 or f == 1)
        im.draft('RGB', (width // want, height // want))
        reduction = width / im.size[0]
      crop = tuple(v / reduction for v in (l, t, r, b))
      return np.asarray(im.resize((224, 224), Image.BILINEAR, box=crop))

  def simple_cv2(d, i):
    h, w = simplejpeg.decode_jpeg_header(d)[:2]
    l, t, r, b = box(h, w, i)
    return cv2.resize(simplejpeg.decode_jpeg(d)[t:b, l:r], (224, 224))

  def opencv(d, i):
    a = cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR)
    l, t, r, b = box(*a.shape[:2], i)
    return cv2.cvtColor(cv2.resize(a[t:b, l:r], (224, 224)), cv2.COLOR_BGR2RGB)

  def ours(d, i):
    return preprocess.Recipe('inception', 224, 3, random=True)(
        {'image': preprocess.decode.Encoded(d, 'x'), 'label': 0},
        np.random.default_rng(i))['image']

  for name, fn in (('PIL decode + PIL bilinear resize (before)', lambda d, i: pil(d, i, 0)),
                   ('PIL decode with draft + PIL resize', lambda d, i: pil(d, i, 1)),
                   ('OpenCV imdecode + cv2.resize', opencv),
                   ('simplejpeg + cv2.resize', simple_cv2),
                   ('ours (preprocess.Recipe: simplejpeg, DCT scaling, cv2)', ours)):
    times = []
    for _ in range(3):
      start = time.perf_counter()
      for i, d in enumerate(data):
        fn(d, i)
      times.append((time.perf_counter() - start) / len(data))
    ms = statistics.median(times) * 1e3
    out[f'decoder_ms/{name}'] = ms
    print(f'decoders, 1 core: {name:58s} {ms:.3f} ms/image ({1e3 / ms:.0f}/s)')
