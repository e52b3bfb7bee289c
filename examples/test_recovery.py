"""Recovery: how fast the sender is back once the CPU contention ends.  Copy this into your suite.

A busy receiving CPU is seldom busy for good: a batch job, a compaction, a noisy neighbour comes
and goes.  What an application cares about is how fast its send rate comes back when it goes.
``cpu_pressure(on_s=, off_s=)`` cycles the hogs: running for ``on_s``, stopped (SIGSTOP) for
``off_s``, again and again; ``SendResult.recovery`` gives, per release, how long after it the send
rate was back to 90 % of the unpressured rate (read in 10 ms windows; both settable with
``resume_fraction=`` and ``window_ms=``), and ``resume_ms`` bounds the worst release.

The path is the starved one of test_eagain_story.py: the receiver's NAPI poll in a kthread on
CPU 1, where the hogs run, and a send buffer of three datagrams.  While the hogs run, the kthread
gets a third of CPU 1 and the buffer stays full; once they are stopped it runs at once and drains
the ring, so the sender is back in the first window (about 2 ms per release at 90 % on a quiet
host).  The claim is what that mechanism fixes, with room for a machine shared with other work:
back to half the unpressured rate, read in 20 ms windows, within most of the off period (250 of
300 ms).  A sender that stays slow after the contention ended (a backoff that never resets, a
pacing bug) is what it catches.  Where other busy processes share the CPUs, stopping the hogs lets
the scheduler move them onto the freed CPU, and the rate need not rise at all: ``pressured_pps``
above ``reference_pps`` in the output says the run measured the neighbours, not the hogs.
"""

from __future__ import annotations

import pytest


@pytest.mark.topology(gro=True, threaded_napi=True, napi_cpus=[1])
@pytest.mark.cpu_pressure(cpus=[1], workers=2, on_s=0.3, off_s=0.3, resume_fraction=0.5, window_ms=20)
@pytest.mark.udpsend(duration=1.8, cpu=0, receiver_cpu=1, sndbuf=4096)
@pytest.mark.resume_ms(max=250)
def test_the_sender_is_back_soon_after_each_release(udpsend_result):
    """Releases at 0.3, 0.9 and 1.5 s; each one's resume is read against the rate the sender
    settles at in the second half of the off periods (``recovery["reference_pps"]``)."""
    rec = udpsend_result.recovery
    print(
        f"resume_ms per release: {[x['resume_ms'] for x in rec['releases']]}, reference {rec['reference_pps']} pps, "
        f"pressured {rec['pressured_pps']} pps"
    )
    # the schedule kept time with the series (the last release is left out if the run ended before it came back):
    # never early, late only by what the result owns up to (a toggle came 62 ms late in 1 of 30 calibration runs)
    assert len(rec["releases"]) in (2, 3)
    for release, planned in zip(rec["releases"], (300, 900, 1500)):
        assert -20 < release["at_ms"] - planned < rec["late_max_ms"] + 20, (release, rec["late_max_ms"])
