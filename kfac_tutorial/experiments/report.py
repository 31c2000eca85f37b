"""Print the closing numbers of recorded multi-seed comparisons.

    python -m kfac_tutorial.experiments.report book/results/evidence_cnn.json book/results/evidence_bert.json

Per file: each method's means and 95% intervals, the λ each seed chose (and whether it is
interior), every comparison's difference, interval and verdict, the matched-plasticity
comparisons, the forgetting split, the dev/test sizes per seed and task, the smallest
detectable KFAC − EWC difference in reduction and the run time.
"""

from __future__ import annotations

import sys

from .results import comparisons_table, evidence_table, frontier_table, read_results


def report(path: str) -> str:
    import pandas as pd

    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 20)
    r = read_results(path)
    out = [
        f"===== {path}: {r['model']} {r['profile']} {' -> '.join(r['tasks'])}, seeds {r['seeds']}",
        evidence_table(r).to_string(),
        "",
        comparisons_table(r, None).to_string(),
    ]
    ft = frontier_table(r)
    if len(ft):
        out += ["", ft.to_string()]
    for m, e in r["methods"].items():
        line = f"{m}: forgetting encoder {e['mean'].get('forgetting_encoder')}, table {e['mean'].get('forgetting_table')}"
        if "sweep" in e:
            line += (
                f"; λ per seed {[s['lambda'] for s in e['seeds']]}, interior {[s['lambda_interior'] for s in e['seeds']]}, "
                f"tried {[[x['lambda'] for x in s['sweep']] for s in e['seeds']]}"
            )
        line += f"; sweep seconds per seed {[round(s['sweep_seconds']) for s in e['seeds']]}"
        out.append(line)
    for s, ex in r["examples_per_seed"].items():
        out.append(
            f"seed {s} (dev, test, train, concepts): "
            + ", ".join(f"{t} {n['dev']}/{n['test']}/{n['train']}/{n['concepts']}" for t, n in ex.items())
        )
    out.append(f"smallest detectable KFAC − EWC reduction difference: {r['statistics']['power'].get('kfac-ewc')}")
    out.append(f"total seconds {r.get('total_seconds'):.0f}; commands {r.get('command')}; commit {r.get('git_commit')}")
    return "\n".join(out)


def main(argv=None) -> int:
    for path in sys.argv[1:] if argv is None else argv:
        print(report(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
