"""Does a shorter context window keep agreement? (issue 15, part 2: "keep it only if
agreement on the tune half of the dev file does not drop").

For each token budget K (``--max-length``: the prompt loses its left end first, so a long
dialogue keeps its last turns), build the default direction (every other setting default,
the demo contrastive set) and annotate the *tune* half of HH-RLHF harmless dev (the seeded
split of ``scripts/evaluate_defaults.py``; the test half is not read). Prints agreement with
the human label (ties ½) with a bootstrap interval, the paired difference to the 512-token
default on the same pairs, tokens run and seconds.

Run: ``python scripts/evaluate_context_window.py [--budgets 512 256 192 128] [--limit N]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> None:
    from evaluate_defaults import dev_split, hh_pairs

    from legend_core import config
    from legend_core.data.formats import read_contrast_set
    from legend_core.method.encode import EncodeSettings, tokenize
    from legend_core.method.label_agreement import (
        agreement_interval,
        paired_difference,
    )
    from legend_core.method.models import load_model
    from legend_core.method.pipeline import annotate_pairs, build_direction

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[512, 256, 192, 128])
    parser.add_argument("--limit", type=int, default=None, help="first N pairs of the tune half")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "context_window.json"))
    args = parser.parse_args()

    pairs = hh_pairs()
    tune = [pairs[i] for i in dev_split(len(pairs))["tune"]][: args.limit]
    items = read_contrast_set(config.DEMO_CONTRAST)
    lm = load_model()
    rows, scores = [], {}
    for budget in args.budgets:
        settings = EncodeSettings(config.DEFAULT_TEMPLATE, config.DEFAULT_POOLING, budget)
        built = build_direction(lm, items, settings, method=config.DEFAULT_METHOD)
        direction = built.direction
        texts = tokenize(
            lm.tokenizer,
            [p.prompt for p in tune] * 2,
            [p.chosen for p in tune] + [p.rejected for p in tune],
            settings,
        )
        start = time.perf_counter()
        margins = annotate_pairs(lm, tune, direction)
        seconds = time.perf_counter() - start
        scores[budget] = margins
        interval = agreement_interval(margins)
        row = {
            "max_length": budget,
            "layer": direction.layer,
            "agreement": interval.estimate,
            "low": interval.low,
            "high": interval.high,
            "tokens_as_two_texts": int(sum(len(t.ids) for t in texts)),
            "annotate_s": seconds,
        }
        if budget != args.budgets[0]:
            diff = paired_difference(scores[budget], scores[args.budgets[0]])
            row["minus_first"] = {"estimate": diff.estimate, "low": diff.low, "high": diff.high}
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"pairs": len(tune), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
