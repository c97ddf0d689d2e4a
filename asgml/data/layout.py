"""Where each dataset's files must be, checked without torch: the data-layout errors and the
expected layouts of the datamodules, light enough for a check before anything heavy is imported.

``check_datamodule_config`` looks at a ``dataset.datamodule`` config (not the datamodule):
for the datamodules of this package (``_TARGETS``) it checks that ``data_dir`` is set, exists
and holds the split files the datamodule opens first, so ``python -m asgml.train`` fails in
about a second, before the start-up block and before any run folder is made
(``asgml.run.precheck``). The datamodules run the same checks again (they are built
without that Hydra callback too: tests, notebooks, ``asgml.eval``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class DataLayoutError(FileNotFoundError):
    """A data directory or split file is missing; the message shows the expected layout."""


def layout_error(what: str, layout: str) -> DataLayoutError:
    return DataLayoutError(f"{what}\nExpected layout:\n{layout.rstrip()}")


def check_data_dir(
    data_dir: str | os.PathLike | None, name: str, layout: str, hint: str = ""
) -> Path:
    """``data_dir`` as a Path, or an error showing the expected layout (``hint``: where else
    a root can be set, appended to the "not set" message)."""
    if data_dir is None or str(data_dir) in ("", "None", "null"):
        raise layout_error(
            f"{name}: data_dir is not set; pass data_dir=/path/to/{name} on the command line"
            + hint,
            layout,
        )
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise layout_error(f"{name}: data_dir {str(path)!r} does not exist", layout)
    return path


def require_file(path: Path, name: str, layout: str) -> Path:
    if not path.is_file():
        raise layout_error(f"{name}: missing file {str(path)!r}", layout)
    return path


CREMAD_LAYOUT = """\
<data_dir>/
  train.csv                      no header, rows `<clip>,<LABEL>` (e.g. 1088_IOM_NEU_XX,NEU)
  test.csv                       same format; LABEL in NEU HAP SAD FEA DIS ANG
  AudioWAV/<clip>.wav
  Image-01-FPS/<clip>/*.jpg      1-fps frames, sorted by name
(see docs/datasets/cremad.md for preparation from the raw CREMA-D release)"""

AVE_LAYOUT = """\
<data_dir>/
  stat.txt                           class names, one per line (label = index in sorted list)
  my_train.txt, my_test.txt          rows `<class>,<name>`
  audio_spec/<name>.pkl              pickled (257, 1004) float spectrogram
  visual/<name>/frame_00001.jpg ...  10 frames per clip
(see docs/datasets/ave.md and ks.md for preparation from the raw videos)"""

KS_LAYOUT = """\
<data_dir>/
  my_train.txt, my_test.txt          rows `<ytid>[_<start>_<end>],10,<label>` (label 0..30)
  audio/<name>.npy                   (1024, 128) fbank
  visual/<name>/*.jpg                1-fps frames
(see docs/datasets/ave.md and ks.md for preparation from the raw videos)"""

MMSA_LAYOUT = """\
<data_dir>/
  <file>        an MMSA pickle: unaligned_50.pkl (MOSI, MOSEI) or unaligned_39.pkl (SIMS),
                {train|valid|test: {text, text_bert, audio, vision, audio_lengths,
                 vision_lengths, regression_labels, ...}}
(data_dir may also be the pickle itself; see docs/datasets/mmsa.md)"""


def _cremad(dm: Mapping[str, Any]) -> tuple[str, str, list[str]]:
    return "cremad", CREMAD_LAYOUT, ["train.csv", "test.csv"]


def _aveks(dm: Mapping[str, Any]) -> tuple[str, str, list[str]]:
    files = [str(dm.get("train_file", "my_train.txt")), str(dm.get("test_file", "my_test.txt"))]
    if dm.get("split_format", "class_name") == "class_name":
        return str(dm.get("name")), AVE_LAYOUT, [*files, str(dm.get("stat_file", "stat.txt"))]
    return str(dm.get("name")), KS_LAYOUT, files


# datamodule `_target_` -> (name, layout, files that must exist under data_dir)
_TARGETS = {
    "asgml.data.cremad.CremadDataModule": _cremad,
    "asgml.data.avdataset.AVEKSDataModule": _aveks,
}
MMSA_TARGET = "asgml.data.mmsa.MMSADataModule"


def check_datamodule_config(dm: Mapping[str, Any], hint: str = "") -> None:
    """Raise ``DataLayoutError`` when the data of a ``dataset.datamodule`` config (its
    ``data_dir`` resolved) is not where the datamodule will look; other datamodules pass."""
    target = str(dm.get("_target_", ""))
    if target == MMSA_TARGET:
        name, data_dir = str(dm.get("name")), dm.get("data_dir")
        if data_dir is not None and Path(str(data_dir)).expanduser().is_file():
            return  # the pickle itself
        root = check_data_dir(data_dir, name, MMSA_LAYOUT, hint)
        require_file(root / str(dm.get("file")), name, MMSA_LAYOUT)
        return
    spec = _TARGETS.get(target)
    if spec is None:
        return
    name, layout, files = spec(dm)
    root = check_data_dir(dm.get("data_dir"), name, layout, hint)
    for f in files:
        require_file(root / f, name, layout)
