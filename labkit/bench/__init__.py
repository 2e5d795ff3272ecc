"""The benchmark harness: timing (:mod:`.timing`), result records (:mod:`.records`) and the
reports that ``labkit bench`` prints (:mod:`.report`)."""

from labkit.bench.records import Record, label, load_results, run_meta, save_records, versions
from labkit.bench.timing import copy_roofline_gbps, gbps, l2_bytes, rotating, rotation_count, time_ms

__all__ = ["Record", "copy_roofline_gbps", "gbps", "l2_bytes", "label", "load_results", "rotating",
           "rotation_count", "run_meta", "save_records", "time_ms", "versions"]
