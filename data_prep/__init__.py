"""data_prep: converters from raw recommendation data sets into p5x's normalized dataset directory.

One module per source format (p5, amazon, recbole, movielens, yelp), each exposing
`convert(input, **options) -> Converted`; `python -m data_prep FORMAT --input ... --output ...`
runs one and writes the result through `p5x.schema.write_dataset`. See data_prep/README.md.
"""

from __future__ import annotations

from . import amazon, movielens, p5, recbole, yelp

# format name -> converter module (each has convert(); add_arguments() when it takes extra options)
CONVERTERS = {"p5": p5, "amazon": amazon, "recbole": recbole, "movielens": movielens, "yelp": yelp}
# formats whose raw data can be thinned with a k-core filter (P5's layout is already 5-core)
KCORE_FORMATS = ("amazon", "recbole", "movielens", "yelp")

__all__ = ["CONVERTERS", "KCORE_FORMATS"]
