"""Layer 1, the host: what the plugin changes on the machine and how it is undone.

Network namespaces (``netns``), veth pairs and their shaping (``topology``,
``qdisc``, ``rtnl``), sysctls (``sysctl``), the undo stack (``undo``), the crash
journal for global sysctls (``journal``), owner tags, the state directory and
the host lock (``state``), and the privilege check (``privileges``).  Imports
nothing above it and no pytest.
"""
