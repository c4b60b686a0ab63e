"""The public retrieval datasets ``rkit data download`` knows, as data: where each file comes from
and where it goes under the data root.

Sources (facts, read from the authors' public download code: filipradenovic/revisitop
``python/download.py`` for the revisited benchmarks and the 1M distractors, and
filipradenovic/cnnimageretrieval-pytorch ``cirtorch/utils/download.py`` for retrieval-SfM):

* ROxford5k / RParis6k (Radenović et al., CVPR 2018): the Oxford / Paris Buildings image archives
  of the Oxford VGG group, and the revisited ground truth ``gnd_<name>.pkl``.
* R1M (``revisitop1m``, same paper): 100 ``tar.gz`` parts and the image list.
* retrieval-SfM-120k / 30k (Radenović, Tolias, Chum, ECCV 2016 / TPAMI 2018): one image archive
  shared by both, the ``db.pkl`` training database (120k) and the ``*-whiten.pkl`` whitening
  pairs.

Layout under the data root (``--root``, else ``$RKIT_DATA``)::

    ROOT/roxford5k/gnd_roxford5k.pkl, ROOT/roxford5k/jpg/*.jpg        (rkit eval --dataset roxford5k)
    ROOT/rparis6k/gnd_rparis6k.pkl,  ROOT/rparis6k/jpg/*.jpg
    ROOT/revisitop1m/revisitop1m.txt, ROOT/revisitop1m/jpg/...       (rkit eval --distractors revisitop1m)
    ROOT/retrieval-sfm-120k/retrieval-SfM-120k.pkl, -whiten.pkl, ims/ (rkit train --data retrieval-sfm-120k)
    ROOT/retrieval-sfm-30k/retrieval-SfM-30k-whiten.pkl              (images: ROOT/retrieval-sfm-120k/ims)

The authors publish most files over plain ``http``; the downloader asks for ``https`` first and
uses ``http`` only with ``--allow-http`` (:mod:`retrievalkit.download`). No checksums are
published for these files: the first download records size and sha256 in the manifest
(``ROOT/.rkit-manifest.json``) and later downloads are verified against it.
"""

from __future__ import annotations

import dataclasses
from pathlib import PurePosixPath

from .errors import RkitError

OXFORD_BUILDINGS = "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings"
PARIS_BUILDINGS = "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings"
REVISITOP_DATA = "http://cmp.felk.cvut.cz/revisitop/data/datasets"
REVISITOP_1M = "http://ptak.felk.cvut.cz/revisitop/revisitop1m"
CIRTORCH_DATA = "http://cmp.felk.cvut.cz/cnnimageretrieval/data"
R1M_PARTS = 100


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One file to fetch.

    Attributes:
        url: where the authors publish it.
        path: where it goes, relative to the data root. An archive is downloaded to
            ``ROOT/.downloads/<file name>`` and extracted into ``path`` (a folder).
        archive: a ``.tgz``/``.tar.gz`` to extract (safely, see :mod:`retrievalkit.archives`).
        flatten: keep only the files of the archive, without its folders (the Oxford / Paris
            archives hold ``oxford/...``/``paris/<landmark>/...`` folders; the benchmark reads
            ``jpg/<name>.jpg``).
        sha256: the expected digest when one is published (none is, for these datasets).
    """

    url: str
    path: str
    archive: bool = False
    flatten: bool = False
    sha256: str | None = None

    @property
    def name(self) -> str:
        return PurePosixPath(self.url).name


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """A dataset: its files, what it is for, and the paper it comes from."""

    name: str
    kind: str                 # "benchmark", "distractors" or "training"
    files: tuple[RemoteFile, ...]
    description: str
    reference: str
    #: files that must exist after download (relative to the root): what "complete" means
    expects: tuple[str, ...] = ()


def _revisited(name: str, base: str, archives: tuple[str, ...], images: str, reference: str) -> DatasetEntry:
    files = tuple(RemoteFile(f"{base}/{a}", f"{name}/jpg", archive=True, flatten=True) for a in archives)
    gnd = RemoteFile(f"{REVISITOP_DATA}/{name}/gnd_{name}.pkl", f"{name}/gnd_{name}.pkl")
    return DatasetEntry(name, "benchmark", files + (gnd,),
                        f"{images}, revisited ground truth (70 queries, Easy/Medium/Hard)", reference,
                        expects=(f"{name}/gnd_{name}.pkl", f"{name}/jpg"))


_REVISITED_PAPER = "Radenović, Iscen, Tolias, Avrithis, Chum: Revisiting Oxford and Paris, CVPR 2018"
_SFM_PAPER = "Radenović, Tolias, Chum: CNN image retrieval learns from BoW, ECCV 2016 (TPAMI 2018)"
_SFM_IMAGES = RemoteFile(f"{CIRTORCH_DATA}/train/ims/ims.tar.gz", "retrieval-sfm-120k/ims", archive=True)

CATALOG: dict[str, DatasetEntry] = {entry.name: entry for entry in (
    _revisited("roxford5k", OXFORD_BUILDINGS, ("oxbuild_images-v1.tgz",),
               "Oxford Buildings, 5063 images", _REVISITED_PAPER),
    _revisited("rparis6k", PARIS_BUILDINGS, ("paris_1-v1.tgz", "paris_2-v1.tgz"),
               "Paris Buildings, 6392 images", _REVISITED_PAPER),
    DatasetEntry(
        "revisitop1m", "distractors",
        tuple(RemoteFile(f"{REVISITOP_1M}/jpg/revisitop1m.{i}.tar.gz", "revisitop1m/jpg", archive=True)
              for i in range(1, R1M_PARTS + 1))
        + (RemoteFile(f"{REVISITOP_1M}/revisitop1m.txt", "revisitop1m/revisitop1m.txt"),),
        "R1M: 1,001,001 distractor images in 100 parts (about 400 GB)", _REVISITED_PAPER,
        expects=("revisitop1m/revisitop1m.txt", "revisitop1m/jpg")),
    DatasetEntry(
        "retrieval-sfm-120k", "training",
        (_SFM_IMAGES,
         RemoteFile(f"{CIRTORCH_DATA}/train/dbs/retrieval-SfM-120k.pkl", "retrieval-sfm-120k/retrieval-SfM-120k.pkl"),
         RemoteFile(f"{CIRTORCH_DATA}/train/dbs/retrieval-SfM-120k-whiten.pkl",
                    "retrieval-sfm-120k/retrieval-SfM-120k-whiten.pkl")),
        "retrieval-SfM-120k: SfM-clustered training images, db.pkl (train/val) and whitening pairs", _SFM_PAPER,
        expects=("retrieval-sfm-120k/retrieval-SfM-120k.pkl", "retrieval-sfm-120k/ims")),
    DatasetEntry(
        "retrieval-sfm-30k", "training",
        (_SFM_IMAGES,
         RemoteFile(f"{CIRTORCH_DATA}/train/dbs/retrieval-SfM-30k-whiten.pkl",
                    "retrieval-sfm-30k/retrieval-SfM-30k-whiten.pkl")),
        "retrieval-SfM-30k: whitening pairs over a subset of the retrieval-SfM-120k images (shared ims/)",
        _SFM_PAPER, expects=("retrieval-sfm-30k/retrieval-SfM-30k-whiten.pkl", "retrieval-sfm-120k/ims")),
)}

#: training sets: name -> (database files to try, in order; images root), relative to the data root
TRAINING_LAYOUT: dict[str, tuple[tuple[str, ...], str]] = {
    "retrieval-sfm-120k": (("retrieval-sfm-120k/retrieval-SfM-120k.pkl",), "retrieval-sfm-120k"),
    "retrieval-sfm-30k": (("retrieval-sfm-30k/retrieval-SfM-30k.pkl", "retrieval-sfm-30k/retrieval-SfM-30k-whiten.pkl"),
                          "retrieval-sfm-120k"),
}


def lookup(name: str) -> DatasetEntry:
    """The catalog entry called ``name`` (case-insensitive); a clear error names the known ones."""
    entry = CATALOG.get(name.strip().lower())
    if entry is None:
        raise RkitError(f"unknown dataset {name!r}: rkit data download knows {', '.join(CATALOG)}")
    return entry
