"""Layer 4, the kernel lane: the selected tests run in a VM booted with another kernel.  No pytest here.

``vm`` boots the image with virtme-ng (preconditions, KVM or TCG, the guest's pytest
arguments); ``wire`` is what travels between host and guest (the selection, one report
line per phase); ``prepare-kernel.sh`` unpacks a Debian kernel with its modules and
headers for it.  The pytest sides are ``frontend/kernel_lane.py`` (host) and
``frontend/guest.py`` (guest).
"""
