"""Layer 5, what users touch: the pytest glue and the ``udpsend`` command's parts.

The session object and per-test context (``session``), options (``options``),
markers and their validation (``markers``), verdicts after a test (``verdicts``),
gathering samples across xdist (``collect``), terminal output (``reporting``),
stash keys (``keys``), pcap keeping (``pcap``) and ``udpsend doctor`` (``doctor``).
The entry points ``plugin``, ``fixtures`` and ``cli`` sit on top and only wire.
"""
