"""Text for calibration, validation and evaluation: local files, Hugging Face datasets, or CPython's own docs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spon.errors import SponError

__all__ = ["TextSplits", "load_splits", "interleave", "load_eval_text", "tokenize", "sequences", "EMBEDDED", "STDLIB", "HUB_DATASETS", "PARTS", "bos_token_id"]

EMBEDDED = "pydoc"  # CPython's documentation topics (pydoc_data.topics): on every machine with Python
STDLIB = "stdlib"  # CPython's own source code (top-level Lib/*.py): another domain, also on every machine
STDLIB_CHARS = 400_000  # first this many characters of the sorted modules (~120k SmolLM2 tokens before the split)
HUB_DATASETS = ("wikitext2", "c4")
BLOCK_CHARS = 1500  # paragraphs are grouped into blocks of about this size before the split
SPLIT_BUCKETS = 20  # a block's sha256 bucket: 0-1 evaluation, 2-3 validation, 4-19 calibration (10/10/80%)


@dataclass
class TextSplits:
    """Three disjoint texts and where they came from."""

    calibration: str
    validation: str
    evaluation: str
    source: dict = field(default_factory=dict)


def _blocks(doc_key: str, text: str) -> list[tuple[str, str]]:
    paras = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    blocks, cur = [], []
    for p in paras:
        cur.append(p)
        if sum(len(c) for c in cur) >= BLOCK_CHARS:
            blocks.append("\n\n".join(cur))
            cur = []
    if cur:
        blocks.append("\n\n".join(cur))
    return [(f"{doc_key}#{i}", b) for i, b in enumerate(blocks)]


def assign_blocks(docs: dict[str, str]) -> list[tuple[str, int, str]]:
    """(block key, part, text) for every block: part 0 calibration, 1 validation, 2 evaluation, by sha256 of the key."""
    out = []
    for key in sorted(docs):
        for bkey, block in _blocks(key, docs[key]):
            bucket = int(hashlib.sha256(bkey.encode()).hexdigest(), 16) % SPLIT_BUCKETS
            out.append((bkey, 0 if bucket >= 4 else (1 if bucket >= 2 else 2), block))
    return out


def interleave(texts: list[str]) -> str:
    """The texts' blocks merged in proportion: block i of a text of n blocks sits at its relative position (i + 0.5) / n."""
    keyed = []
    for t, text in enumerate(texts):
        blocks = [b for _, b in _blocks(str(t), text)]
        keyed += [((i + 0.5) / len(blocks), t, b) for i, b in enumerate(blocks)]
    return "\n\n".join(b for *_, b in sorted(keyed, key=lambda k: k[:2]))


def split_documents(docs: dict[str, str]) -> tuple[str, str, str]:
    """Deterministic split of documents into calibration / validation / evaluation text (80/10/10 by block)."""
    blocks = assign_blocks(docs)
    return tuple("\n\n".join(b for _, part, b in blocks if part == i) for i in range(3))  # type: ignore[return-value]


def _pydoc_docs() -> dict[str, str]:
    from pydoc_data.topics import topics

    return dict(topics)


def _stdlib_docs() -> dict[str, str]:
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total = {}, 0
    for f in sorted(root.glob("*.py")):
        if total >= STDLIB_CHARS:
            break
        text = f.read_text(encoding="utf-8", errors="replace")[: STDLIB_CHARS - total]
        docs[f.name] = text
        total += len(text)
    if not docs:
        raise SponError(f"no Python source found under {root}; use the embedded text 'pydoc' or a path to a text file")
    return docs


def _local_docs(path: Path) -> dict[str, str]:
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in {".txt", ".md", ".rst", ""})
    docs = {}
    for f in files:
        try:
            docs[str(f.relative_to(path) if path.is_dir() else f.name)] = f.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise SponError(f"cannot read text file {f} ({e.strerror})") from None
    if not any(t.strip() for t in docs.values()):
        raise SponError(f"no text found in {path}; give a .txt/.md file or a folder of them")
    return docs


def _hub_splits(name: str) -> tuple[str, str, str]:
    try:
        import datasets
    except ImportError:
        raise SponError(
            f"the dataset {name} needs the 'datasets' package (pip install datasets) and a dataset hub; "
            f"offline, use the embedded text {EMBEDDED!r} or a path to a text file"
        ) from None
    try:
        if name == "wikitext2":
            ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1")
            return tuple("\n\n".join(ds[s]["text"]) for s in ("train", "validation", "test"))  # type: ignore[return-value]
        files = {
            "train": "en/c4-train.00000-of-01024.json.gz",
            "validation": "en/c4-validation.00000-of-00008.json.gz",
        }
        ds = datasets.load_dataset("allenai/c4", data_files=files)
        train, val = ds["train"]["text"][:20000], ds["validation"]["text"]
        return "\n\n".join(train), "\n\n".join(val[:1000]), "\n\n".join(val[1000:3000])
    except (OSError, ValueError) as e:  # network, hub or cache errors (requests' and the hub's are OSErrors)
        raise SponError(
            f"cannot load dataset {name!r} from the hub ({type(e).__name__}); offline, use the embedded text {EMBEDDED!r} "
            "or a path to a text file"
        ) from None


def load_splits(spec: str = EMBEDDED) -> TextSplits:
    """Text splits from `spec`: "pydoc" (embedded), "wikitext2" or "c4" (hub), or a local file/folder path.

    "a+b" is a mixture: each split interleaves a's and b's splits block by block, in proportion to their lengths, so
    that any prefix of it (the calibration tokens, the validation sequences) holds both domains in the same shares
    as the whole (e.g. "pydoc+stdlib": both embedded corpora, twice the held-out tokens).
    """
    if "+" in spec and not Path(spec).exists():
        parts = [load_splits(p.strip()) for p in spec.split("+") if p.strip()]
        source = {"name": spec, "description": " interleaved with ".join(p.source["description"] for p in parts),
                  "python": parts[0].source.get("python")}
        return TextSplits(*(interleave([getattr(p, f) for p in parts]) for f in ("calibration", "validation", "evaluation")),
                          source=source)
    if spec == EMBEDDED:
        cal, val, ev = split_documents(_pydoc_docs())
        source = {"name": "pydoc", "description": "CPython documentation topics (pydoc_data.topics), 80/10/10 split by block"}
    elif spec == STDLIB:
        cal, val, ev = split_documents(_stdlib_docs())
        source = {"name": STDLIB, "description": f"CPython standard library source (Lib/*.py, first {STDLIB_CHARS} chars), 80/10/10 split by block"}
    elif spec in HUB_DATASETS:
        cal, val, ev = _hub_splits(spec)
        source = {"name": spec, "description": f"Hugging Face dataset {spec}, standard splits"}
    else:
        path = Path(spec)
        if not path.exists():
            raise SponError(
                f"text source {spec!r} is not a file, a folder, or one of {EMBEDDED}, {STDLIB}, {', '.join(HUB_DATASETS)}"
            )
        cal, val, ev = split_documents(_local_docs(path))
        source = {"name": str(path), "description": f"local text {path}, 80/10/10 split by block"}
    import sys

    source["python"] = sys.version.split()[0]
    return TextSplits(cal, val, ev, source)


PARTS = ("whole", "calibration", "validation", "evaluation")


def load_eval_text(spec: str = EMBEDDED, part: str | None = None) -> tuple[str, dict]:
    """The text to score and its description (with "split": the part scored).

    part None: a local file or folder is scored whole (what the user handed over); a named corpus (pydoc, stdlib,
    wikitext2, c4) by its held-out evaluation part, since its other parts give calibration and training text.
    "whole" / "calibration" / "validation" / "evaluation" ask for that part explicitly.
    """
    named = all(p.strip() in (EMBEDDED, STDLIB, *HUB_DATASETS) for p in spec.split("+"))
    part = part or ("evaluation" if named else "whole")
    if part not in PARTS:
        raise SponError(f"unknown part {part!r}; use one of {', '.join(PARTS)}")
    if part == "whole" and not named:
        path = Path(spec)
        if not path.exists():
            raise SponError(f"text source {spec!r} is not a file, a folder, or one of {EMBEDDED}, {STDLIB}, {', '.join(HUB_DATASETS)}")
        docs = _local_docs(path)
        text = "\n\n".join(docs[k] for k in sorted(docs))
        return text, {"name": str(path), "description": f"local text {path}", "split": "whole file"}
    splits = load_splits(spec)
    if part == "whole":
        return "\n\n".join((splits.calibration, splits.validation, splits.evaluation)), {**splits.source, "split": "whole"}
    return getattr(splits, part), {**splits.source, "split": part}


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """The token ids of `text` as a 1-D LongTensor, without special tokens (windows add BOS themselves)."""
    import logging

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity(logging.ERROR)  # silence "sequence longer than model max length"
    try:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    finally:
        hf_logging.set_verbosity(level)
    return torch.tensor(ids, dtype=torch.long)


def sequences(ids: torch.Tensor, seq_len: int, max_tokens: int | None = None, bos: int | None = None) -> torch.Tensor:
    """Non-overlapping [N, seq_len] sequences from a 1-D token stream (the remainder is dropped).

    With `bos`, each row is BOS followed by seq_len - 1 text tokens, as the model sees text at inference.
    """
    if max_tokens is not None:
        ids = ids[:max_tokens]
    body = seq_len - (1 if bos is not None else 0)
    n = ids.numel() // body
    rows = ids[: n * body].view(n, body)
    if bos is not None:
        rows = torch.cat([torch.full((n, 1), bos, dtype=rows.dtype), rows], dim=1)
    return rows


def bos_token_id(tokenizer) -> int | None:
    """The BOS id if this tokenizer starts sequences with it (Gemma does; SmolLM2 does not)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a")["input_ids"]
    return bos if bos is not None and ids and ids[0] == bos else None
