"""Layer 5, what users touch in pytest: the pytest glue (each module that uses pytest imports it at the top).

The session object and per-test context (``session``), the option table shared with the
``udpsend`` command (``options``) and what pytest does with the options (``configure``),
markers and their validation (``markers``), verdicts after a test (``verdicts``), gathering
samples across xdist (``collect``), terminal output (``reporting``), stash keys (``keys``),
pcap keeping (``pcap``), interleaved arms (``interleave``), the kernel lane's host side
(``kernel_lane``, ``kernel_gate``, ``kernel_interleave``) and guest side (``guest``), the
generated docs reference (``reference``).  The entry points ``plugin``, ``fixtures`` and
``cli`` sit on top and only wire; the ``udpsend`` command's subcommands are ``command/``.
"""
