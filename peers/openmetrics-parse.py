"""Parses an OpenMetrics text exposition (stdin) with Prometheus's own Python client parser, and prints its
samples as JSON: {sample name: [{labels, value}]}. Any parse error fails the process."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

samples: dict[str, list] = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        samples.setdefault(sample.name, []).append({"labels": sample.labels, "value": sample.value})
print(json.dumps(samples))
