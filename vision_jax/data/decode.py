"""Image bytes -> HWC uint8 arrays, decoded once and only at the resolution a recipe needs.

Sources hand out undecoded images (`Encoded`: a file's bytes, or a tfds record's); the
recipe (preprocess.py) reads the size from the header, chooses its crop, and asks for a
decode reduced by up to `max_reduction` (1, 2, 4 or 8). JPEGs are decoded by libjpeg-turbo
through simplejpeg, with its DCT scaling: a 2x reduction skips three quarters of the
inverse DCT instead of computing pixels a resize would throw away. Anything else
(PNG, BMP, GIF, WebP, TIFF, CMYK JPEGs) is decoded by PIL at full size.

Pixels keep the channels they are stored with, as 8 bits: grey (1 channel) or RGB (3;
palette, CMYK and YCbCr images converted by PIL, alpha dropped). 16-bit images keep their
high byte (v >> 8), the same mapping PIL applies when it reads a 16-bit RGB PNG, so grey
and colour 16-bit files come out alike (predict.py reads them through `to_8bit` too).
32-bit float images have no defined 8-bit range and are refused.

EXIF orientation is applied, in training, evaluation and prediction alike (predict.py reads
files with PIL's `ImageOps.exif_transpose`, which `orient` matches exactly): a photo is
seen upright, as the camera meant it, by every mode. `size` reports the oriented size, so
a recipe's crop is chosen on the image it will get.
"""
from __future__ import annotations

import dataclasses
import io

import numpy as np
import simplejpeg
from PIL import Image

from vision_jax.errors import UserError

REDUCTIONS = (8, 4, 2, 1)  # What DCT scaling offers without leaving libjpeg's fast paths.
_SIXTEEN_BIT = ('I;16', 'I;16B', 'I;16L', 'I;16N')
_GREY = ('1', 'L', 'LA', 'I') + _SIXTEEN_BIT


class CorruptImageError(UserError):
  """An image that cannot be decoded; the message names the file."""


def corrupt(name: str, error: Exception) -> CorruptImageError:
  return CorruptImageError(
      f'Cannot read image {name} ({type(error).__name__}: {error}). Remove or replace the '
      'file, or rerun with --config.dataset.skip_corrupt=True to skip unreadable images '
      '(they are counted in the log).')


@dataclasses.dataclass(frozen=True)
class Encoded:
  """An image still in its file format; `name` (a path) is what errors report."""
  data: bytes
  name: str


def _is_jpeg(data: bytes) -> bool:
  return data[:3] == b'\xff\xd8\xff'


def _jpeg_header(data: bytes) -> tuple[int, int, str] | None:
  """(height, width, colourspace) of a JPEG simplejpeg decodes; None for anything else."""
  if not _is_jpeg(data):
    return None
  try:
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
  except ValueError:
    return None
  return (height, width, colorspace) if colorspace in ('Gray', 'YCbCr', 'RGB') else None


_EXIF_ORIENTATION = 0x0112
_TRANSPOSED = (5, 6, 7, 8)  # Orientations that swap height and width.


def orientation(data: bytes) -> int:
  """The EXIF orientation (1..8) of an encoded image; 1 (as stored) without one. Cheap
  for the common case: a JPEG without an EXIF block is not parsed."""
  if _is_jpeg(data) and b'Exif' not in data[:65536]:
    return 1
  try:
    with Image.open(io.BytesIO(data)) as pil:
      value = pil.getexif().get(_EXIF_ORIENTATION, 1)
  except Exception:  # pylint: disable=broad-except  # Unreadable: reported when decoded.
    return 1
  return value if value in range(1, 9) else 1


def orient(array: np.ndarray, value: int) -> np.ndarray:
  """HWC pixels as stored -> as EXIF orientation `value` says to show them (what PIL's
  ImageOps.exif_transpose does)."""
  if value == 2:
    array = array[:, ::-1]
  elif value == 3:
    array = array[::-1, ::-1]
  elif value == 4:
    array = array[::-1]
  elif value == 5:
    array = array.transpose(1, 0, 2)
  elif value == 6:
    array = np.rot90(array, -1)
  elif value == 7:
    array = array.transpose(1, 0, 2)[::-1, ::-1]
  elif value == 8:
    array = np.rot90(array, 1)
  return np.ascontiguousarray(array)


def size(image: Encoded | np.ndarray) -> tuple[int, int]:
  """(height, width) as shown (EXIF orientation applied), from the header of an encoded
  image (nothing decoded)."""
  if not isinstance(image, Encoded):
    return image.shape[0], image.shape[1]
  header = _jpeg_header(image.data)
  if header:
    height, width = header[0], header[1]
  else:
    try:
      with Image.open(io.BytesIO(image.data)) as pil:
        width, height = pil.size
    except Exception as e:  # pylint: disable=broad-except
      raise corrupt(image.name, e) from e
  if orientation(image.data) in _TRANSPOSED:
    return width, height
  return height, width


def to_8bit(image: Image.Image) -> Image.Image:
  """A PIL image as 8-bit grey ('L') or 'RGB' (16-bit: the high byte; see the docstring)."""
  if image.mode in _SIXTEEN_BIT or image.mode == 'I':
    values = np.asarray(image)
    if values.min() < 0 or values.max() > 65535:
      raise ValueError(f'{image.mode!r} pixels outside 0..65535 have no 8-bit meaning')
    return Image.fromarray((values.astype(np.uint32) >> 8).astype(np.uint8), 'L')
  if image.mode == 'F':
    raise ValueError("32-bit float pixels ('F') have no defined 8-bit range; save the "
                     'image with 8 or 16 bits per channel')
  return image.convert('L' if image.mode in _GREY else 'RGB')


def _decode_pil(data: bytes, max_reduction: int) -> tuple[np.ndarray, int]:
  with Image.open(io.BytesIO(data)) as pil:
    reduction = 1
    if pil.format == 'JPEG' and max_reduction > 1:  # CMYK JPEGs: PIL's DCT scaling.
      width, height = pil.size
      pil.draft(None, (width // max_reduction, height // max_reduction))
      reduction = max(1, round(width / pil.size[0]))
    array = np.asarray(to_8bit(pil))
  return (array[..., None] if array.ndim == 2 else array), reduction


def decode(image: Encoded | np.ndarray, max_reduction: int = 1) -> tuple[np.ndarray, int]:
  """(HWC uint8 pixels, reduction r): the image shrunk r times (r <= max_reduction, a power
  of two; 1 for arrays and non-JPEG files), EXIF orientation applied. Pixel i of the result
  covers pixels [i r, (i + 1) r) of the full-size (oriented) image."""
  if not isinstance(image, Encoded):
    return image, 1
  array, reduction = _decode_stored(image, max_reduction)
  value = orientation(image.data)
  return (orient(array, value) if value != 1 else array), reduction


def _decode_stored(image: Encoded, max_reduction: int) -> tuple[np.ndarray, int]:
  """decode() without the EXIF orientation: the pixels as stored."""
  if max_reduction not in REDUCTIONS:
    raise ValueError(f'max_reduction={max_reduction}: use one of {REDUCTIONS}.')
  try:
    header = _jpeg_header(image.data)
    if header is None:
      return _decode_pil(image.data, max_reduction)
    height, width, colorspace = header
    # The largest reduction that keeps the image at least height / max_reduction tall.
    array = simplejpeg.decode_jpeg(
        image.data, 'GRAY' if colorspace == 'Gray' else 'RGB',
        min_height=-(-height // max_reduction), min_width=-(-width // max_reduction))
    return array, max(1, round(width / array.shape[1]))
  except Exception as e:  # pylint: disable=broad-except
    raise corrupt(image.name, e) from e


def reduction_for(crop_height: float, crop_width: float, size: int) -> int:
  """The largest reduction that leaves a crop at least `size` pixels on both sides."""
  fit = min(crop_height, crop_width) / size
  return next(r for r in REDUCTIONS if r <= max(fit, 1))
