"""Layer 2, load and observation: driving traffic and watching the kernel.

The C send/receive loops (``_engine.c``) and one send run (``sender``), its
parameters (``params``), CPU hogs (``load``), kernel counters (``counters``),
the sock_wfree probes (``probes``, ``bpfprobe``, ``histogram``), traffic capture
(``capture``) and what a run produces (``result.SendResult``).  Builds on the
host layer; no pytest.
"""
