"""Process exit codes, documented in the README and in ``--help``."""

OK = 0
FAILED = 1
USAGE = 2
ABORTED = 3
IN_DOUBT = 4
# Another run holds some of these VPSes: nothing was sent; retry later.
BUSY = 6
# Every VPS is back, but the recovery time (first send -> last ready) exceeded the run's RTO.
# Failures (1) and in-doubt VPSes (4) take precedence.
RTO_MISSED = 7
INTERRUPTED = 130
