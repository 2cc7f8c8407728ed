"""Print the markdown table of the CUHK01 ablations from runs/ablations/*/results.json."""

import json
import sys
from pathlib import Path

ORDER = ["baseline", "msfl", "msfl_msgr", "ce", "ce_contrastive", "ce_semi_hard", "ce_improved_triplet",
         "ce_quadruplet", "ce_soft_hard", "ce_msml", "mutual", "aligned", "mspcnn"]


def rows(name: str, res: dict):
    peers = sorted({k.split(".")[0] for k in res if k.startswith("peer")})
    if not peers:
        yield name, res
    for p in peers:
        yield f"{name} ({p})", {k.split(".", 1)[1]: v for k, v in res.items() if k.startswith(p + ".")}


def main(root: str = "runs/ablations") -> None:
    print("| run | epochs | train min | rank-1 | rank-5 | mAP | mINP |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    found = {p.parent.name: p for p in Path(root).glob("*/results.json")}
    for name in ORDER + sorted(set(found) - set(ORDER)):
        if name not in found:
            continue
        res = json.loads(found[name].read_text())
        for label, m in rows(name, res):
            print(f"| {label} | {res['epochs']} | {res['train_minutes']:.1f} | {100 * m['rank1']:.1f} | "
                  f"{100 * m['rank5']:.1f} | {100 * m['mAP']:.1f} | {100 * m['mINP']:.1f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
