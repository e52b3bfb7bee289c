"""Which NIC pairs a session may use, and how to find them.

A topology's ``link`` is ``"veth"`` (made per test) or a NIC model whose TX
completion frees the skb in the driver: ``"vmxnet3"``, ``"virtio"``,
``"e1000e"``, or ``"nic"`` (whatever pair ``--udpsend-nic-pair`` names).  Two
places provide NIC pairs, as ``{model: (port_a, port_b)}``:

- the kernel lane: the guest boots with two NICs of each model a selected test
  asks for, wired back to back on a qemu hub; the lane tells the guest their MAC
  addresses in ``UDPSEND_LANE_NICS`` (``model=mac,mac ...``) and the guest finds
  the ports by MAC (their names depend on udev);
- ``--udpsend-nic-pair A,B`` on a bare-metal runner: two cabled ports (or VFs);
  they count for ``"nic"`` and for the model their driver is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pytest_udpsend.errors import ConfigError

LANE_NICS_ENV = "UDPSEND_LANE_NICS"
SYS_NET = Path("/sys/class/net")


@dataclass(frozen=True)
class Model:
    qemu_device: str  # qemu -device name
    driver: str  # the guest kernel driver (module) bound to it


MODELS = {
    "vmxnet3": Model("vmxnet3", "vmxnet3"),
    "virtio": Model("virtio-net-pci", "virtio_net"),
    "e1000e": Model("e1000e", "e1000e"),
}
LINKS = ("veth", "nic", *MODELS)  # what topology(link=...) accepts


def check_link(value: object) -> str:
    if value not in LINKS:
        raise ConfigError(f"link={value!r}: must be one of {', '.join(repr(v) for v in LINKS)}")
    return str(value)


def lane_macs(model: str) -> tuple[str, str]:
    """Locally administered MACs for the lane's pair of ``model`` (stable, one block per model)."""
    n = list(MODELS).index(model)
    return f"02:75:64:70:{n:02x}:01", f"02:75:64:70:{n:02x}:02"


def encode_lane_env(models: set[str]) -> str:
    return " ".join(f"{m}={','.join(lane_macs(m))}" for m in sorted(models) if m in MODELS)


def driver_of(ifname: str) -> str:
    """The kernel driver behind a port ('' for a virtual device without one)."""
    link = SYS_NET / ifname / "device" / "driver"
    return os.path.basename(os.readlink(link)) if link.is_symlink() else ""


def by_mac() -> dict[str, str]:
    """{mac: ifname} of the devices of the current network namespace."""
    found = {}
    for dev in SYS_NET.iterdir():
        try:
            found[(dev / "address").read_text().strip().lower()] = dev.name
        except OSError:
            continue
    return found


def lane_pairs(env: str) -> dict[str, tuple[str, str]]:
    """The guest's pairs from ``UDPSEND_LANE_NICS``; a pair whose ports are not found is left out
    (the test that wants it then says the lane did not provide it)."""
    macs = by_mac()
    pairs = {}
    for entry in env.split():
        model, _, pair = entry.partition("=")
        a, _, b = pair.lower().partition(",")
        if a in macs and b in macs:
            pairs[model] = (macs[a], macs[b])
    return pairs


IFNAMSIZ = 16  # the kernel's buffer for an interface name, its NUL included


def valid_ifname(name: str) -> bool:
    """The kernel's dev_valid_name(): 1 to 15 bytes, not '.' or '..', no '/', ':' or whitespace.

    Checked before a name is joined to a /sys path (``../../../etc`` would leave /sys/class/net)."""
    size = len(name.encode())
    return 0 < size < IFNAMSIZ and name not in (".", "..") and not any(c in "/:" or c.isspace() for c in name)


def parse_pair(text: str) -> tuple[str, str]:
    """``--udpsend-nic-pair A,B``: two distinct, valid interface names."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise ConfigError(f"--udpsend-nic-pair {text!r}: give two different port names, e.g. ens1f0,ens1f1")
    for name in parts:
        if not valid_ifname(name):
            raise ConfigError(
                f"--udpsend-nic-pair {text!r}: {name!r} is not an interface name (1 to {IFNAMSIZ - 1} "
                "bytes, not '.' or '..', no '/', ':' or whitespace), e.g. ens1f0,ens1f1"
            )
    return parts[0], parts[1]


def available(option_pair: str | None) -> dict[str, tuple[str, str]]:
    """Every pair this session may use, keyed by link value."""
    pairs = lane_pairs(os.environ.get(LANE_NICS_ENV, ""))
    if option_pair:
        a, b = parse_pair(option_pair)
        for port in (a, b):
            if not (SYS_NET / port).exists():
                raise ConfigError(
                    f"--udpsend-nic-pair: no port named {port!r} in this host's network namespace (see 'ip link')"
                )
        pairs["nic"] = (a, b)
        driver = driver_of(a)
        for model, spec in MODELS.items():
            if spec.driver == driver and driver_of(b) == driver:
                pairs.setdefault(model, (a, b))
    return pairs


def missing_reason(link: str, option_pair: str | None) -> str:
    """Why a NIC link cannot run here, with the fix."""
    if os.environ.get(LANE_NICS_ENV) is not None:
        return (
            f"link={link!r}: the kernel lane booted without a {link} pair (its ports were not found by MAC); "
            f"is the {MODELS[link].driver if link in MODELS else link} driver in this kernel?"
        )
    if link == "nic":
        return "link='nic' uses the ports named by --udpsend-nic-pair A,B: give two cabled ports (or VFs)"
    extra = (
        f", or --udpsend-nic-pair with two {MODELS[link].driver} ports"
        if option_pair is None
        else (f"; --udpsend-nic-pair {option_pair} is not a pair of {MODELS[link].driver} ports")
    )
    return (
        f"link={link!r} needs a pair of emulated {link} NICs: run it in the kernel lane with "
        f"--udpsend-kernel IMAGE (which boots the guest with them){extra}"
    )
