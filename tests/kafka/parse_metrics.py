#!/usr/bin/env python3
"""Parses /metrics scrapes with Prometheus's own Python parser (prometheus_client), checks each
is well formed, and prints the last one's samples, one `name{labels as JSON}<TAB>value` a line,
for tests/metrics.rs to compare with what the load generator sent.

Usage: parse_metrics.py SCRAPE_FILE...  (the last file is the one printed)
Checks, for every file: it parses; every family has a type the format knows; each histogram's
buckets rise to a +Inf bucket equal to its count; counters are not negative.
"""
import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def check(path):
    text = open(path, encoding="utf-8").read()
    samples = {}
    families = 0
    for family in text_string_to_metric_families(text):
        families += 1
        assert family.type in ("counter", "gauge", "histogram", "untyped", "info"), family
        buckets = {}
        for s in family.samples:
            labels = dict(s.labels)
            if family.type == "histogram" and s.name.endswith("_bucket"):
                le = labels.pop("le")
                key = json.dumps(labels, sort_keys=True)
                buckets.setdefault(key, []).append((float(le), s.value))
            if family.type == "counter":
                assert s.value >= 0 and not math.isnan(s.value), (path, s)
            name = s.name + json.dumps(dict(s.labels), sort_keys=True)
            samples[name] = s.value
        for key, series in buckets.items():
            bounds = [b for b, _ in series]
            counts = [c for _, c in series]
            assert bounds == sorted(bounds) and bounds[-1] == math.inf, (path, family.name, key)
            assert counts == sorted(counts), (path, family.name, key, counts)
            count = samples[family.name + "_count" + key]
            assert counts[-1] == count, (path, family.name, key, counts[-1], count)
    assert families > 20, f"{path}: only {families} families"
    return samples


def main():
    parsed = [check(path) for path in sys.argv[1:]]
    print(f"parsed {len(parsed)} scrapes, the last with {len(parsed[-1])} samples", file=sys.stderr)
    for name, value in sorted(parsed[-1].items()):
        print(f"{name}\t{value!r}")


if __name__ == "__main__":
    main()
