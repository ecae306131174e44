"""
Layer-7 records and parsers, neutral between the capture and the signals: telegen.ebpf (kernel
events -> records) and telegen.signals (records -> spans and metrics) both import this package,
and it imports neither. A protocol's parser (http.py) and its record (records.py) live here.
"""
