"""UPMC Food-101 (101 dishes, image + recipe-page title) in the layout BalanceBenchmark's
loader reads (https://github.com/GeWu-Lab/BalanceBenchmark @ 4c1482f
``balancemm/datasets/food_dataset.py``; ``configs/dataset_config.yaml:17-25``), from the
UPMC Food-101 release (Wang et al., ICME workshops 2015).

Layout (``data_dir``)::

    texts/train_titles.csv, texts/test_titles.csv   a header with the columns Image_path,
                                                    text, label (food_dataset.py:51, 54, 91-97)
    images/train/<label>/<Image_path>               the images (food_dataset.py:52, 97)
    images/test/<label>/<Image_path>

Classes: the sorted folder names under ``images/train`` (``find_classes``,
food_dataset.py:19-26, 63); label = index. Text (food_dataset.py:71-80): ``clean_text``
(a leading ``RT``, links to the end of the line and ``#`` removed), then ``max_length`` (40)
tokens: ``tokenizer: bert`` -- a BERT WordPiece tokenizer from a local directory
(``transformers``, ``pip install -e .[text]``; ``[CLS] ... [SEP]``, padded), as the official
code; ``tokenizer: hash`` (no download) -- lower-cased ``\\w+`` words hashed (CRC-32) into
``vocab_size - 1`` buckets (ids ``1..vocab_size-1``, 0 = padding), for
`asgml.models.text.BagOfWordsEncoder`. Items: ``{<image>: (3, 1, S, S), <text>: (L,)
int64, "lengths": {<text>: ()}, "label"}``.

Images (food_dataset.py:38-49): train ``RandomRotation(30)``, ``Resize((S, S))``, horizontal
flip; eval ``Resize((S, S))``; ImageNet normalisation. Rows whose image is missing are
skipped and counted (the official loader would fail at that item); an image that does not
decode is an error naming it; ``python -m asgml.prepare verify=true`` decodes every listed
image and lists the bad ones.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from typing_extensions import override

from asgml.data.audiovisual import IMAGENET_MEAN, IMAGENET_STD, decode_frame, stratified_val_split
from asgml.data.base import SplitDataModule, check_data_dir, layout_error, require_file
from asgml.data.issues import DataIssues

log = logging.getLogger("asgml.data")

NAME = "food101"
TOKENIZERS = ("hash", "bert")
COLUMNS = ("Image_path", "text", "label")
LAYOUT = """\
<data_dir>/
  texts/train_titles.csv        header `Image_path,text,label`, one row per image
  texts/test_titles.csv
  images/train/<label>/<Image_path>
  images/test/<label>/<Image_path>
(see docs/datasets/food101.md)"""


@dataclass
class Post:
    """One listed sample: its image, title text and class index."""

    image: Path
    text: str
    label: int


def clean_text(raw: str) -> str:
    """BalanceBenchmark's ``clean_text`` (food_dataset.py:71-75)."""
    t = re.sub(r"^RT[\s]+", "", raw)
    t = re.sub(r"https?:\/\/.*[\r\n]*", "", t)
    return re.sub(r"#", "", t)


def hash_tokens(text: str, vocab_size: int, max_length: int) -> list[int]:
    """Lower-cased ``\\w+`` words as ids ``1 + crc32(word) % (vocab_size - 1)``, at most
    ``max_length`` of them (a stable hash: the same ids in every process and run)."""
    words = re.findall(r"\w+", text.lower())[:max_length]
    return [1 + zlib.crc32(w.encode("utf-8")) % (vocab_size - 1) for w in words]


def read_titles(path: Path, classes: Sequence[str], image_root: Path) -> list[Post]:
    """The rows of a ``<split>_titles.csv``; a missing column or unknown label names the file
    (and line)."""
    index = {c: i for i, c in enumerate(classes)}
    posts = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; expected a header with {list(COLUMNS)}, "
                f"got {reader.fieldnames}"
            )
        for lineno, row in enumerate(reader, start=2):
            label = (row["label"] or "").strip()
            if label not in index:
                raise ValueError(
                    f"{path}:{lineno}: unknown label {label!r} (not a folder of {image_root.parent / 'train'})"
                )
            posts.append(
                Post(
                    image_root / label / row["Image_path"].strip(), row["text"] or "", index[label]
                )
            )
    return posts


class FoodPosts(Dataset):
    """``{<image>: (3, 1, S, S), <text>: (L,), "lengths": {<text>: ()}, "label"}`` items."""

    def __init__(self, dm: Food101DataModule, posts: Sequence[Post], train: bool) -> None:
        self.dm, self.posts, self.train = dm, list(posts), train
        s = dm.image_size
        geometry: list[v2.Transform] = [v2.Resize((s, s), antialias=True)]
        if train:
            geometry = [v2.RandomRotation(30), *geometry, v2.RandomHorizontalFlip()]
        self.geometry = v2.Compose(geometry)
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.posts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        p, dm = self.posts[i], self.dm
        x = torch.from_numpy(decode_frame(p.image, None).copy()).permute(2, 0, 1)
        x = (self.geometry(x).float() / 255.0 - self.mean) / self.std
        ids, n = dm.tokenize(clean_text(p.text))
        image, text = dm.modalities
        return {
            image: x[:, None],
            text: ids,
            "lengths": {text: torch.tensor(n, dtype=torch.long)},
            "label": torch.tensor(p.label, dtype=torch.long),
        }


class _VerifySet(Dataset):
    def __init__(self, posts: Sequence[Post]) -> None:
        self.posts = posts

    def __len__(self) -> int:
        return len(self.posts)

    def __getitem__(self, i: int) -> list[str]:
        try:
            decode_frame(self.posts[i].image, None)
        except Exception as e:
            return [str(e)]
        return []


def _identity(x: Any) -> Any:
    return x


class Food101DataModule(SplitDataModule):
    """UPMC Food-101 image + title (see the module docstring).

    Args:
        data_dir: dataset root (see ``LAYOUT``).
        modalities: the names of the image and the text stream (batch keys).
        num_classes: checked against the class folders (101).
        image_size: side S of the square images (224).
        tokenizer: ``hash`` (no download) or ``bert`` (``tokenizer_dir``).
        tokenizer_dir: a local BERT tokenizer directory (``save_pretrained``) for ``bert``.
        vocab_size: hash buckets + 1 for ``hash`` (the text encoder's ``vocab_size``).
        max_length: tokens per title (40).
        val_fraction: fraction of each train class carved out (seeded) as validation.
        seed: seed of the validation split.
        batch_size: loader batch size.
        num_workers: loader worker processes.
        pin_memory: loader ``pin_memory``.
        strict: fail instead of skipping rows whose image is missing.
    """

    def __init__(
        self,
        data_dir: str | None,
        modalities: Sequence[str] = ("visual", "text"),
        num_classes: int | None = 101,
        image_size: int = 224,
        tokenizer: str = "hash",
        tokenizer_dir: str | None = None,
        vocab_size: int = 30000,
        max_length: int = 40,
        val_fraction: float = 0.1,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        strict: bool = False,
    ) -> None:
        super().__init__()
        self.NAME = NAME
        self.data_dir = check_data_dir(data_dir, NAME, LAYOUT)
        self.SPLIT_FILES = {s: f"texts/{s}_titles.csv" for s in ("train", "test")}
        for f in self.SPLIT_FILES.values():
            require_file(self.data_dir / f, NAME, LAYOUT)
        names = [str(m) for m in modalities]
        if len(names) != 2 or names[0] == names[1]:
            raise ValueError(
                f"{NAME}: modalities must be two distinct names [<image>, <text>], got {names}"
            )
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"{NAME}: tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
        if vocab_size < 2 or max_length < 1:
            raise ValueError(f"{NAME}: vocab_size must be >= 2 and max_length >= 1")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"{NAME}: val_fraction must be in [0, 1), got {val_fraction}")
        train_images = self.data_dir / "images" / "train"
        if not train_images.is_dir():
            raise layout_error(f"{NAME}: missing folder {str(train_images)!r}", LAYOUT)
        self.classes = sorted(e.name for e in os.scandir(train_images) if e.is_dir())
        if num_classes is not None and num_classes != len(self.classes):
            raise ValueError(
                f"{NAME}: num_classes={num_classes} but {train_images} holds {len(self.classes)} "
                "class folders; set dataset.num_classes to match"
            )
        self.num_classes = len(self.classes)
        self.modalities, self.image_size = names, int(image_size)
        self.tokenizer, self.vocab_size, self.max_length = (
            tokenizer,
            int(vocab_size),
            int(max_length),
        )
        self._bert: Any = None
        if tokenizer == "bert":
            self._bert = load_bert_tokenizer(tokenizer_dir)
            self.vocab_size = int(self._bert.vocab_size)
        self.val_fraction, self.seed, self.strict = float(val_fraction), int(seed), strict
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.splits: dict[str, FoodPosts] = {}
        self._posts: dict[str, list[Post]] = {}
        self.data_issues = DataIssues(NAME)

    def encoder_overrides(self) -> dict[str, dict[str, Any]]:
        """The hashed text encoder's vocabulary follows ``vocab_size``."""
        return (
            {self.modalities[1]: {"vocab_size": self.vocab_size}}
            if self.tokenizer == "hash"
            else {}
        )

    def tokenize(self, text: str) -> tuple[Tensor, int]:
        """``(max_length,)`` int64 ids (0-padded) and the number of real tokens."""
        if self._bert is not None:
            enc = self._bert(
                text, padding="max_length", max_length=self.max_length, truncation=True
            )
            ids = enc["input_ids"]
            return torch.tensor(ids, dtype=torch.long), int(sum(enc["attention_mask"]))
        ids = hash_tokens(text, self.vocab_size, self.max_length)
        out = torch.zeros(self.max_length, dtype=torch.long)
        out[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out, len(ids)

    def official_posts(self, split: str) -> list[Post]:
        if split in self._posts:
            return self._posts[split]
        path = self.data_dir / self.SPLIT_FILES[split]
        posts = read_titles(path, self.classes, self.data_dir / "images" / split)
        if not posts:
            raise ValueError(f"{NAME}: {path} lists no rows (empty {split} split)")
        gone = [p for p in posts if not p.image.is_file()]
        if gone:
            msg = (
                f"{NAME}: {len(gone)} of {len(posts)} images listed in {path} are missing, "
                f"e.g. {gone[0].image}"
            )
            if self.strict:
                raise FileNotFoundError(msg + " (strict=true)")
            warnings.warn(
                msg + "; those rows are skipped (set strict=true to fail instead)", stacklevel=2
            )
        self.data_issues.record(
            split, "missing_files", [p.image for p in gone], len(gone), "skipped: no image file"
        )
        kept = [p for p in posts if p.image.is_file()]
        if not kept:
            raise FileNotFoundError(f"{NAME}: none of the images listed in {path} is on disk")
        self._posts[split] = kept
        return kept

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train, test = self.official_posts("train"), self.official_posts("test")
        tr, va = stratified_val_split([p.label for p in train], self.val_fraction, self.seed)
        if not tr:
            raise ValueError(f"{NAME}: the train split is empty; lower val_fraction")
        self.splits = {
            "train": FoodPosts(self, [train[i] for i in tr], True),
            "val": FoodPosts(self, [train[i] for i in va], False),
            "test": FoodPosts(self, test, False),
        }
        log.info("%s: %d train / %d val / %d test rows", NAME, len(tr), len(va), len(test))

    @override
    def eval_view(self, split: str) -> Dataset:
        ds = self.splits[split]
        return FoodPosts(self, ds.posts, False) if ds.train else ds

    def verify_files(self) -> list[str]:
        """Decode every listed image once; one line per missing or bad file."""
        problems: list[str] = []
        for split in ("train", "test"):
            path = self.data_dir / self.SPLIT_FILES[split]
            listed = read_titles(path, self.classes, self.data_dir / "images" / split)
            problems += [
                f"{p.image}: missing (listed in {path})" for p in listed if not p.image.is_file()
            ]
            loader = DataLoader(
                _VerifySet(self.official_posts(split)), batch_size=None,
                num_workers=self.num_workers, collate_fn=_identity,
            )  # fmt: skip
            for errors in loader:
                problems += errors
        return problems


def load_bert_tokenizer(tokenizer_dir: str | None) -> Any:
    """A BERT tokenizer from a local directory (``transformers``; nothing is downloaded)."""
    try:
        from transformers import BertTokenizer
    except ImportError as e:
        raise ImportError(
            f"{NAME}: tokenizer=bert needs transformers: pip install -e .[text] "
            "(or tokenizer=hash, which needs no extra)"
        ) from e
    path = Path(str(tokenizer_dir)).expanduser() if tokenizer_dir else None
    if path is None or not (path / "vocab.txt").is_file():
        raise FileNotFoundError(
            f"{NAME}: tokenizer=bert needs tokenizer_dir, a local BERT tokenizer directory with "
            f"vocab.txt; got {tokenizer_dir!r}"
            + (f" ({path.resolve()} has no vocab.txt)" if path is not None else "")
        )
    return BertTokenizer.from_pretrained(str(path), local_files_only=True)
