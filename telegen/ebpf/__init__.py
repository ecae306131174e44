"""
eBPF engine: BCC programs compiled from bpf/*.c, ring buffers read on the reactor, decoders.

See docs/ebpf.md. Importing this package does not import bcc; only the loader does, off the
reactor thread, so the agent runs (and says why eBPF failed) on hosts without BCC.
"""
