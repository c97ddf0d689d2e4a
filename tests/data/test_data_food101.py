"""UPMC Food-101 (image + title) on a tiny fixture in BalanceBenchmark's layout; the text
encoders (hashed bag of words; a local BERT when transformers is installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from fixtures import make_food101

from asgml.data.food101 import Food101DataModule, clean_text, hash_tokens
from asgml.models.text import BagOfWordsEncoder

IMG = 16
TINY = [
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "dataset.image_size=32",
    "dataset.num_classes=3",
    "dataset.encoders.visual.width=8",
    "dataset.datamodule.batch_size=4",
    "dataset.datamodule.num_workers=0",
    "dataset.datamodule.vocab_size=64",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_food101(tmp_path_factory.mktemp("food") / "UPMC_Food101")


def dm(root: Path, **kw) -> Food101DataModule:
    kw = {"image_size": IMG, "num_workers": 0, "batch_size": 2, "num_classes": 3, **kw}
    m = Food101DataModule(str(root), **kw)
    m.setup()
    return m


def test_clean_text_and_hash_tokens() -> None:
    # food_dataset.py:71-75
    assert clean_text("RT  Best #pizza ever http://x.y/z") == "Best pizza ever "
    ids = hash_tokens("Best Pizza, best!", 101, 40)
    assert ids == [1 + zlib.crc32(w) % 100 for w in (b"best", b"pizza", b"best")]
    assert len(hash_tokens("a " * 50, 101, 40)) == 40


def test_items_labels_and_text(root: Path) -> None:
    m = dm(root, vocab_size=64, max_length=8)
    assert m.classes == ["apple_pie", "pizza", "sushi"]
    test = m.splits["test"]
    assert [(p.image.name, p.label) for p in test.posts] == [
        ("apple_pie_9.jpg", 0), ("pizza_10.jpg", 1), ("sushi_11.jpg", 2),
    ]  # fmt: skip
    item = test[1]
    assert item["visual"].shape == (3, 1, IMG, IMG)
    # "RT Best pizza recipe #0 http://..." -> "Best pizza recipe 0 "
    want = hash_tokens("Best pizza recipe 0 ", 64, 8)
    assert item["text"].tolist() == want + [0] * (8 - len(want))
    assert item["lengths"]["text"].item() == 4
    assert m.encoder_overrides() == {"text": {"vocab_size": 64}}
    batch = next(iter(m.test_dataloader()))
    assert batch["text"].shape == (2, 8) and batch["lengths"]["text"].tolist() == [5, 4]


def test_bag_of_words_is_the_mean_embedding_of_valid_tokens() -> None:
    torch.manual_seed(0)
    enc = BagOfWordsEncoder(10, embed_dim=4, feature_dim=3)
    x = torch.tensor([[3, 5, 5, 7], [2, 0, 0, 0]])
    out = enc(x, torch.tensor([3, 1]))
    e = enc.embed.weight
    want = torch.relu(enc.proj(torch.stack([(e[3] + e[5] + e[5]) / 3, e[2]])))
    torch.testing.assert_close(out, want)
    with pytest.raises(ValueError, match="vocab_size=10 got token ids in"):
        enc(torch.tensor([[11]]))


def test_missing_image_and_bad_rows(root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "food"
    shutil.copytree(root, copy)
    gone = copy / "images" / "test" / "pizza" / "pizza_10.jpg"
    gone.unlink()
    with pytest.warns(UserWarning, match="1 of 3 images listed in .*test_titles.csv are missing"):
        m = dm(copy)
    assert m.data_issues.as_dict()["test"]["missing_files"]["examples"] == [str(gone)]
    with pytest.raises(ValueError, match="num_classes=101 but .* holds 3 class folders"):
        Food101DataModule(str(copy))
    titles = copy / "texts" / "test_titles.csv"
    titles.write_text(titles.read_text() + "x.jpg,some title,ramen\n")
    with pytest.raises(ValueError, match=r"test_titles.csv:5: unknown label 'ramen'"):
        dm(copy)
    titles.write_text("path,text,label\nx.jpg,t,pizza\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['Image_path'\]"):
        dm(copy)


def _bad_copy(root: Path, tmp_path: Path) -> tuple[Path, Path]:
    copy = tmp_path / "food"
    shutil.copytree(root, copy)
    bad = copy / "images" / "train" / "sushi" / "sushi_6.jpg"
    bad.write_bytes(bad.read_bytes()[:30])
    return copy, bad


def test_bad_image_named_and_verified(root: Path, tmp_path: Path) -> None:
    copy, bad = _bad_copy(root, tmp_path)
    m = dm(copy, val_fraction=0.0)
    i = next(k for k, p in enumerate(m.splits["train"].posts) if p.image == bad)
    with pytest.raises(OSError, match=f"cannot read image file {bad}"):
        m.splits["train"][i]
    problems = m.verify_files()
    assert len(problems) == 1 and problems[0].startswith(f"cannot read image file {bad}")


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ASGML_LOG_DIR": str(cwd / "logs")}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_cli_trains_one_epoch_and_verify_lists_bad_file(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _cli(
        ["asgml.train", "dataset=food101", f"data_dir={root}", f"paths.output_dir={out}", *TINY],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "test/acc" in (out / "metrics.json").read_text()
    copy, bad = _bad_copy(root, tmp_path)
    proc = _cli(
        ["asgml.prepare", "dataset=food101", f"data_dir={copy}", "dataset.num_classes=3",
         "verify=true"],
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"BAD cannot read image file {bad}" in proc.stdout


# ------------------------------------------------------------------ BERT (optional extra)
@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT and its WordPiece vocabulary written locally (nothing downloaded)."""
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("bert")
    words = ["best", "pizza", "sushi", "apple", "pie", "recipe", "0", "1", "2"]
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]))
    transformers.BertTokenizer(str(d / "vocab.txt")).save_pretrained(str(d))
    cfg = transformers.BertConfig(
        vocab_size=5 + len(words), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(str(d))
    return d


def test_bert_tokenizer_and_encoder(root: Path, bert_dir: Path) -> None:
    from asgml.models.text import BertTextEncoder

    m = dm(root, tokenizer="bert", tokenizer_dir=str(bert_dir), max_length=10)
    item = m.splits["test"][1]  # "Best pizza recipe 0 " -> [CLS] best pizza recipe 0 [SEP]
    assert item["text"].tolist() == [2, 5, 6, 10, 11, 3, 0, 0, 0, 0]
    assert item["lengths"]["text"].item() == 6 and m.encoder_overrides() == {}
    enc = BertTextEncoder(bert_dir, feature_dim=4)
    assert enc.bert.training  # follows the module's mode (from_pretrained returns eval mode)
    enc.eval()
    x, n = item["text"][None], item["lengths"]["text"][None]
    out = enc(x, n)
    assert out.shape == (1, 4) and torch.equal(out, enc(x, n))  # no dropout at eval
    # BalanceBenchmark's executed behaviour: padding attended to, dropout at eval too
    official = BertTextEncoder(bert_dir, feature_dim=4, attention_mask=False, dropout_at_eval=True)
    official.proj.load_state_dict(enc.proj.state_dict())
    official.eval()
    torch.manual_seed(1)
    a, b = official(x, n), official(x, n)
    assert not torch.equal(a, b)
    masked = BertTextEncoder(bert_dir, feature_dim=4, attention_mask=False).eval()
    masked.proj.load_state_dict(enc.proj.state_dict())
    assert not torch.allclose(masked(x, n), out)  # the mask changes the pooled output
    with pytest.raises(FileNotFoundError, match="no BERT model at"):
        BertTextEncoder(bert_dir / "nope")
    with pytest.raises(FileNotFoundError, match="needs tokenizer_dir"):
        Food101DataModule(str(root), num_classes=3, tokenizer="bert")


def test_food101_bert_preset_trains(root: Path, bert_dir: Path, tmp_path: Path) -> None:
    from conftest import compose_cfg

    from asgml.train import run

    over = [o for o in TINY if "vocab_size" not in o]
    cfg = compose_cfg(
        ["dataset=food101_bert", f"data_dir={root}", f"dataset.bert_dir={bert_dir}", *over],
        output_dir=tmp_path,
        fast=False,
    )
    assert "test/acc" in run(cfg)["metrics"]
