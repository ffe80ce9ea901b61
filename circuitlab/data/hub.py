"""Documents from a Hugging Face dataset (``hf:NAME[@CONFIG][:SPLIT[:FIELD]]``), where the hub is reachable.

Why optional: ``datasets`` is a large dependency most uses of circuitlab never need, so it is
imported only when such a source is opened, and its absence or an unreachable hub is reported
with what to do instead. A dataset already in the local cache opens offline with
``HF_HUB_OFFLINE=1``; a local folder of data files works as NAME too.
"""

from __future__ import annotations

from typing import Sequence


def hf_documents(name: str, config: str = "", split: str = "train", field: str = "text") -> Sequence[str]:
    """The ``field`` column of the dataset split (read lazily from the dataset's Arrow files)."""
    where = f"hf:{name}{'@' + config if config else ''}:{split}"
    try:
        import datasets
    except ImportError as e:
        raise ImportError(f"the data source {where} needs the `datasets` package ({e}); install it with "
                          "`pip install datasets`, or save the texts as a text or JSONL file and use text:PATH "
                          "or jsonl:PATH") from e
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except ConnectionError as e:
        raise ValueError(f"{where}: the Hugging Face hub is unreachable ({e}); with a cached copy set "
                         "HF_HUB_OFFLINE=1, otherwise download the data elsewhere and use text:PATH or "
                         "jsonl:PATH") from e
    except Exception as e:  # noqa: BLE001 -- datasets raises many types; each is re-raised with the source named
        raise ValueError(f"{where}: could not load the dataset: {type(e).__name__}: {e}; check the name, "
                         "configuration (NAME@CONFIG) and split") from e
    if isinstance(ds, datasets.DatasetDict) or not hasattr(ds, "column_names"):
        raise ValueError(f"{where}: expected one split of a dataset, got {type(ds).__name__}")
    if field not in ds.column_names:
        raise ValueError(f"{where}: no field {field!r} (columns: {ds.column_names}); name it as {where}:FIELD")
    return ds[field]
