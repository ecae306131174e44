"""Continuous CPU profiling of the host: BPF stack sampling, symbolization, pprof and OTLP output."""
