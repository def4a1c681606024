"""Text <-> token ids for a token model: the run's Hugging Face tokenizer if it has one, else raw bytes.

A run trained on BPE tokens carries its tokenizer as `tokenizer.json` (in the run directory, and next to the
token files it was trained on); a byte-level run (scripts/prepare_text.py's default) has none and its ids are
the bytes of UTF-8 text, vocabulary 256. Decoding never fails: a byte model can sample an incomplete UTF-8
sequence, shown as U+FFFD.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

TOKENIZER_FILE = "tokenizer.json"  # the Hugging Face `tokenizers` file a BPE run carries, under this name


class TextCodec:
    """`encode(text) -> ids`, `decode(ids) -> text`, `vocab_size`; `tokenizer` None means bytes."""

    def __init__(self, tokenizer: Any = None, source: Path | None = None) -> None:
        self.tokenizer, self.source = tokenizer, source
        self.vocab_size: int = tokenizer.get_vocab_size() if tokenizer is not None else 256

    @classmethod
    def from_dir(cls, directory: str | Path) -> TextCodec:
        """The tokenizer in `directory/tokenizer.json` if there is one, else bytes."""
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            return cls()
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)), path)

    @classmethod
    def for_run(cls, run_dir: str | Path, data_dir: str | Path | None = None) -> TextCodec:
        """The run directory's tokenizer, else its token files' (`data_dir`), else bytes."""
        for directory in (run_dir, data_dir):
            if directory is not None and (Path(directory) / TOKENIZER_FILE).is_file():
                return cls.from_dir(directory)
        return cls()

    @property
    def name(self) -> str:
        return str(self.source) if self.source is not None else "bytes (no tokenizer.json)"

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            return list(text.encode("utf-8"))
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        if self.tokenizer is None:
            return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")
        return str(self.tokenizer.decode(list(ids)))
