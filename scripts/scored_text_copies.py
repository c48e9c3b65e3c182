"""A folder of copies of a corpus's scored (evaluation) part, so that `spon train --data FOLDER` trains and validates on
the very text `spon eval` scores: a ceiling check for the vectors, not a result (the block split of the folder puts
every paragraph of the scored text in its calibration part, and nearly every one in its validation part).

Usage: python scripts/scored_text_copies.py pydoc OUT_FOLDER [copies=20]"""
import sys
from pathlib import Path

from spon.io.data import load_splits

spec, out = sys.argv[1], Path(sys.argv[2])
copies = int(sys.argv[3]) if len(sys.argv) > 3 else 20
text = load_splits(spec).evaluation
out.mkdir(parents=True, exist_ok=True)
for i in range(copies):
    (out / f"copy{i:02d}.txt").write_text(text)
paras = [p for p in text.split("\n\n") if p.strip()]
split = load_splits(str(out))
print(f"{out}: {copies} copies of {spec}'s evaluation part ({len(text):,} characters); its paragraphs in the folder's "
      f"calibration part {sum(p in split.calibration for p in paras)}/{len(paras)}, validation part "
      f"{sum(p in split.validation for p in paras)}/{len(paras)}")
