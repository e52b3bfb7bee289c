"""Layer 4, the kernel lane: the selected tests run in a VM booted with another kernel.

``vm`` boots the image with virtme-ng and brings the guest's reports back as
ordinary test results; ``prepare-kernel.sh`` unpacks a Debian kernel with its
modules and headers for it.
"""
