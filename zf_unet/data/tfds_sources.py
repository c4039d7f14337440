"""TensorFlow Datasets: an ISBI 2012 builder (manual data), :func:`load_tfds`, and the data
source of kind ``tfds`` (:class:`TFDSSource`, ``"tfds:NAME"`` in a config).

``tensorflow_datasets`` is imported at module import: the builder must subclass
``tfds.core.GeneratorBasedBuilder`` (and register the name ``isbi2012``) when this module
loads. It costs about 0.1 s on top of TensorFlow, which ``zf_unet`` imports anyway.

Example::

    from zf_unet.data.tfds_sources import load_tfds, OXFORD_PET_TRIMAP
    ds = load_tfds("isbi2012", manual_dir="~/data/isbi2012")           # (image, mask) pairs
    ds = load_tfds("oxford_iiit_pet", download=True, mask_map=OXFORD_PET_TRIMAP)
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Union

import numpy as np

from zf_unet.backend import require_tensorflow
from zf_unet.data.file_sources import FolderSource, StackSource
from zf_unet.data.masks import ClassValues, Palette
from zf_unet.data.memory_sources import ArraySource, MemorySource
from zf_unet.data.sources import Sample, Source
from zf_unet.errors import DataError

tf = require_tensorflow("TFDS data sets (zf_unet.data.tfds_sources)")
import tensorflow_datasets as tfds  # noqa: E402  (after the check that names the fix)

__all__ = ["ISBI2012_NAME", "Isbi2012", "OXFORD_PET_TRIMAP", "TFDSSource", "load_tfds"]

logger = logging.getLogger("zf_unet")

ISBI2012_NAME = "isbi2012"

#: Oxford-IIIT Pet ``segmentation_mask`` trimap (raw 1, 2, 3) -> class ids:
#: 1 "pet" -> 1, 2 "background" -> 0, 3 "border / not classified" -> 2.
#: Use with ``load_tfds("oxford_iiit_pet", mask_map=OXFORD_PET_TRIMAP)`` and a 3-class model.
OXFORD_PET_TRIMAP: dict[int, int] = {1: 1, 2: 0, 3: 2}

MaskMap = Union[Mapping[int, int], Callable[[tf.Tensor], tf.Tensor]]

_FOLDER_FORM = "folder"
_STACK_FORM = "stacks"

_INSTRUCTIONS = """\
ISBI 2012 cannot be downloaded automatically (the challenge site needs a registration).
Get the training data (e.g. `train-volume.tif` and `train-labels.tif` from
http://brainiac2.mit.edu/isbi_challenge/ or their PNG exports) and put ONE of these
layouts into the manual_dir:

  1. images/NN.png + masks/NN.png   (same file names; 8-bit grayscale; masks 0/255 or
                                      0/1 with 255 / 1 = cell interior, 0 = membrane)
  2. train-volume.tif + train-labels.tif   (multi-page TIFF stacks, one label slice per
                                            image slice, same mask values as above)

Then build it, e.g.:
  builder = tfds.builder("isbi2012", data_dir=...)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir="/path/to/manual_dir"))
or `zf_unet.data.tfds_sources.load_tfds("isbi2012", manual_dir="/path/to/manual_dir")`.
"""


def _manual_form(manual_dir: Path) -> str:
    """Which of the two layouts ``manual_dir`` holds (the folder layout wins if both)."""
    if (manual_dir / "images").is_dir() and (manual_dir / "masks").is_dir():
        return _FOLDER_FORM
    if (manual_dir / "train-volume.tif").is_file() and (manual_dir / "train-labels.tif").is_file():
        return _STACK_FORM
    raise DataError(
        f"{manual_dir}: manual_dir holds neither images/ + masks/ nor train-volume.tif + "
        f"train-labels.tif.\n{_INSTRUCTIONS}"
    )


def _as_gray_uint8(image: np.ndarray, name: str) -> np.ndarray:
    """``(H, W, 1)`` uint8 from an ISBI slice (an RGB file with equal channels is allowed)."""
    if image.shape[2] in (3, 4) and all(
        np.array_equal(image[:, :, 0], image[:, :, c]) for c in (1, 2)
    ):
        image = image[:, :, :1]
    if image.shape[2] != 1:
        raise DataError(f"{name}: {image.shape[2]} channels; ISBI 2012 images are grayscale")
    if image.dtype != np.uint8:
        raise DataError(f"{name}: dtype {image.dtype}; ISBI 2012 images are 8-bit (uint8)")
    return image


class Isbi2012(tfds.core.GeneratorBasedBuilder):
    """ISBI 2012 EM segmentation (neuronal membranes in Drosophila VNC ssTEM slices).

    Built from a manual_dir (see ``MANUAL_DOWNLOAD_INSTRUCTIONS``). Features:
    ``image`` ``(H, W, 1)`` uint8; ``segmentation_mask`` ``(H, W, 1)`` uint8 class ids with
    1 = cell interior, 0 = membrane; ``file_name`` (``images/NN.png`` or
    ``train-volume.tif:NN``). One ``train`` split holding every provided slice.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version: train split from a manual_dir."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> Any:
        """This file. TFDS 4.9.10's default needs the ``importlib_resources`` backport,
        which it does not declare as a dependency; the builder needs no code resources."""
        from etils import epath

        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "ISBI 2012 challenge 'Segmentation of neuronal structures in EM stacks': "
                "512x512 serial-section TEM slices of the Drosophila first instar larva "
                "ventral nerve cord with binary labels (1 = cell interior, 0 = membrane)."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
                    "segmentation_mask": tfds.features.Image(
                        shape=(None, None, 1), dtype=np.uint8
                    ),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "segmentation_mask"),
            homepage="http://brainiac2.mit.edu/isbi_challenge/",
            citation=(
                "@article{cardona2010,\n  title={An Integrated Micro- and Macroarchitectural "
                "Analysis of the Drosophila Brain by Computer-Assisted Serial Section Electron "
                "Microscopy},\n  author={Cardona, A. and Saalfeld, S. and Preibisch, S. and "
                "others},\n  journal={PLoS Biology},\n  volume={8},\n  number={10},\n  "
                "pages={e1000502},\n  year={2010}\n}"
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        manual_dir = Path(dl_manager.manual_dir)
        return {"train": self._generate_examples(manual_dir, _manual_form(manual_dir))}

    def _generate_examples(
        self, manual_dir: Path, form: str
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        n_scaled = 0
        source: Source
        if form == _FOLDER_FORM:
            source = FolderSource(manual_dir, num_classes=2)
        else:
            source = StackSource(manual_dir / "train-volume.tif",
                                 manual_dir / "train-labels.tif", num_classes=2)
        items = (
            (s.name if form == _FOLDER_FORM else f"train-volume.tif:{i:02d}", s.image,
             s.mask, s.scaled_from_255)
            for i, s in enumerate(source)
        )
        for name, image, mask, scaled in items:
            if scaled and not n_scaled:
                logger.info("%s: masks hold {0, 255}; using 255 as class 1 (cell interior)",
                            manual_dir)
            n_scaled += scaled
            yield name, {
                "image": _as_gray_uint8(image, name),
                "segmentation_mask": mask[:, :, None],
                "file_name": name,
            }


# --------------------------------------------------------------------------- load_tfds


def _mask_mapper(
    mask_map: MaskMap | None, name: str, mask_key: str
) -> Callable[[tf.Tensor], tf.Tensor]:
    """A TF function mapping a raw mask tensor to uint8 class ids."""
    where = f"load_tfds({name!r}): {mask_key!r}"
    if mask_map is None:
        def identity(mask: tf.Tensor) -> tf.Tensor:
            if mask.dtype == tf.uint8:
                return mask
            if not mask.dtype.is_integer:
                raise DataError(f"{where} has dtype {mask.dtype.name}; pass a mask_map callable")
            with tf.control_dependencies([
                tf.debugging.assert_less_equal(tf.reduce_max(mask), tf.cast(255, mask.dtype),
                                               message=f"{where} holds values above 255"),
                tf.debugging.assert_non_negative(mask, message=f"{where} holds negative values"),
            ]):
                return tf.cast(mask, tf.uint8)
        return identity

    if callable(mask_map) and not isinstance(mask_map, Mapping):
        fn = mask_map

        def call(mask: tf.Tensor) -> tf.Tensor:
            return tf.cast(fn(mask), tf.uint8)
        return call

    if not isinstance(mask_map, Mapping) or not mask_map:
        raise DataError(
            f"mask_map={mask_map!r}: expected a non-empty dict {{raw_value: class_id}} or a "
            "callable taking and returning a mask tensor"
        )
    keys, values = [], []
    for raw, cid in mask_map.items():
        if isinstance(raw, bool) or not isinstance(raw, (int, np.integer)):
            raise DataError(f"mask_map key {raw!r}: expected an int raw mask value")
        if isinstance(cid, bool) or not isinstance(cid, (int, np.integer)) or not 0 <= cid <= 255:
            raise DataError(f"mask_map[{raw!r}] = {cid!r}: expected a class id from 0 to 255")
        keys.append(int(raw))
        values.append(int(cid))
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(keys, tf.int64), tf.constant(values, tf.int32)
        ),
        default_value=-1,
    )
    known = sorted(keys)

    def lookup(mask: tf.Tensor) -> tf.Tensor:
        if not mask.dtype.is_integer:
            raise DataError(f"{where} has dtype {mask.dtype.name}; a dict mask_map needs integers")
        ids = table.lookup(tf.cast(mask, tf.int64))
        check = tf.debugging.assert_non_negative(
            ids, message=f"{where} holds raw values that are not keys of mask_map {known}"
        )
        with tf.control_dependencies([check]):
            return tf.cast(ids, tf.uint8)
    return lookup


def _with_channel(x: tf.Tensor, what: str) -> tf.Tensor:
    rank = x.shape.rank
    if rank == 2:
        return x[:, :, None]
    if rank != 3:
        raise DataError(f"{what} has shape {x.shape}; expected (H, W) or (H, W, C)")
    return x


def load_tfds(
    name: str,
    split: str = "train",
    image_key: str = "image",
    mask_key: str = "segmentation_mask",
    mask_map: MaskMap | None = None,
    data_dir: str | Path | None = None,
    download: bool = False,
    manual_dir: str | Path | None = None,
) -> tf.data.Dataset:
    """A TFDS segmentation data set as ``(image, mask)`` pairs.

    Args:
        name: TFDS name, e.g. ``"isbi2012"`` or ``"oxford_iiit_pet"`` (``"name:1.2.3"`` ok).
        split: TFDS split string (``"train"``, ``"test[:10%]"`` ...).
        image_key, mask_key: feature names of the image and the mask.
        mask_map: ``{raw_value: class_id}`` (looked up with a ``tf.lookup.StaticHashTable``;
            a raw value that is not a key fails at iteration with ``InvalidArgumentError``),
            or a callable ``mask -> class ids`` on TF tensors (cast to uint8), or ``None``
            (the mask already holds class ids 0..255). See :data:`OXFORD_PET_TRIMAP`.
        data_dir: TFDS data folder (TFDS default ``~/tensorflow_datasets`` when None).
        download: download and prepare the data set if missing (needs network).
        manual_dir: folder with manually downloaded files (for ``isbi2012``); when given
            the data set is prepared from it (no network).

    Returns:
        ``tf.data.Dataset`` of ``(image uint8 (H, W, C), mask uint8 (H, W, 1))``. Image
        and mask sizes are checked per element (``InvalidArgumentError`` on a mismatch).

    Raises:
        DataError: unknown data set, split or feature key, data not prepared, non-uint8
            images, bad ``mask_map``.
    """
    mapper = _mask_mapper(mask_map, name, mask_key)
    data_dir = str(Path(data_dir).expanduser()) if data_dir is not None else None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as exc:
        raise DataError(f"load_tfds: unknown data set name={name!r} ({exc})") from exc
    if download or manual_dir is not None:
        config = tfds.download.DownloadConfig(
            manual_dir=str(Path(manual_dir).expanduser()) if manual_dir is not None else None
        )
        try:
            builder.download_and_prepare(download_config=config)
        except AssertionError as exc:  # TFDS reports a missing manual_dir this way
            raise DataError(f"load_tfds({name!r}): cannot prepare the data set: {exc}") from exc
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError as exc:  # not prepared
        raise DataError(
            f"load_tfds({name!r}): no prepared data in data_dir={builder.data_dir!r}; pass "
            "download=True (needs network) or manual_dir=... to prepare it"
        ) from exc
    except (ValueError, KeyError) as exc:  # unknown split
        raise DataError(f"load_tfds({name!r}): bad split={split!r} ({exc})") from exc
    spec = ds.element_spec
    if not isinstance(spec, Mapping):
        raise DataError(f"load_tfds({name!r}): elements are {spec}; expected a feature dict")
    for arg, key in (("image_key", image_key), ("mask_key", mask_key)):
        if key not in spec:
            raise DataError(
                f"load_tfds({name!r}): {arg}={key!r} is not a feature; features: {sorted(spec)}"
            )
    if spec[image_key].dtype != tf.uint8:
        raise DataError(
            f"load_tfds({name!r}): image_key={image_key!r} has dtype {spec[image_key].dtype.name}; "
            "expected uint8 images"
        )
    where = f"load_tfds({name!r})"

    def to_pair(example: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        image = _with_channel(example[image_key], f"{where}: {image_key!r}")
        mask = _with_channel(mapper(example[mask_key]), f"{where}: mapped {mask_key!r}")
        if mask.shape[-1] not in (None, 1):
            raise DataError(
                f"{where}: mapped {mask_key!r} has {mask.shape[-1]} channels; expected 1 "
                "(use a mask_map that returns class ids)"
            )
        check = tf.debugging.assert_equal(
            tf.shape(image)[:2], tf.shape(mask)[:2],
            message=f"{where}: {image_key!r} and {mask_key!r} sizes differ",
        )
        with tf.control_dependencies([check]):
            return tf.identity(image), tf.ensure_shape(mask, [None, None, 1])

    return ds.map(to_pair, num_parallel_calls=tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- the source


class TFDSSource(Source):
    """A TensorFlow Datasets segmentation set (:func:`load_tfds`,
    ``tfds_kwargs`` passed on). Read whole on first use (TFDS sets here are small). Masks are
    taken as class ids; with ``class_values`` they go through the mask rules like arrays.

    Raises:
        DataError: from :func:`load_tfds`, or a data set without examples.
    """

    kind = "tfds"

    def __init__(self, name: str, *, convention: str = "auto",
                 num_classes: int | str | None = None, palette: Palette | None = None,
                 class_values: ClassValues | None = None, ignore_index: int | None = None,
                 **tfds_kwargs: Any) -> None:
        self.name = name
        self.tfds_kwargs = tfds_kwargs
        self._rules = dict(convention=convention, num_classes=num_classes, palette=palette,
                           class_values=class_values, ignore_index=ignore_index)
        self._samples: Source | None = None

    def _load(self) -> Source:
        if self._samples is None:
            images, masks = [], []
            for img, msk in load_tfds(self.name, **self.tfds_kwargs).as_numpy_iterator():
                images.append(img)
                masks.append(msk[..., 0])
            if not images:
                raise DataError(f"TFDS dataset {self.name!r}: no examples")
            if self._rules["class_values"] is not None:
                self._samples = ArraySource(images, masks, prefix=self.name, **self._rules)
            else:
                self._samples = MemorySource(images, masks, self.name)
        return self._samples

    def __len__(self) -> int:
        return len(self._load())

    def names(self) -> list[str]:
        return self._load().names()

    def read(self, i: int) -> Sample:
        return self._load().read(i)

    def nbytes_hint(self) -> int:
        return self._load().nbytes_hint()
