"""pytest-udpsend: UDP send-path regression tests (EAGAIN, softnet, sock_wfree) in network namespaces."""

__version__ = "0.1.0"
