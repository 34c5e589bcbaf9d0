"""Preference-pair data: tables (tables.py, jsonl_pairs.py, generated.py), image decoding
(images.py), the shared pair transform (transforms.py) and the torch dataset / loader
(dataset.py). Import from the submodules; this package imports nothing heavy on its own."""
