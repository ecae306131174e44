"""
Python's equivalents of Go's /debug/pprof profiles, in the formats the pprof tools read.

pprof.py builds profile.proto (telegen.profiling.pprof_proto); stacks.py reads thread stacks; cpu.py, heap.py and threads.py
build the individual profiles; expvar.py the /debug/vars document. The HTTP side lives in
telegen.api.debug.
"""
