"""Process exit codes: the table of ``--help``, the README and ``report.contract``.

Precedence when several apply: 70 > 4 > 130 > 5 > 1 > 7 > 0 (in doubt is never hidden by
anything milder). Runs that were recorded get theirs from ``report.contract.judge`` over the
whole run as the journal holds it; the tests check that both tables agree.
"""

OK = 0  # every selected VPS ready
FAILED = 1  # run completed, some VPSes failed
# Refused before anything was sent: usage, manifest, pre-flight, stale plan, plan for another
# endpoint.
USAGE = 2
REFUSED = USAGE
CREDENTIALS = 3  # credentials refused
# The name once covered budgets too; it now means only refused credentials (3).
ABORTED = CREDENTIALS
IN_DOUBT = 4  # VPSes remain in doubt: their reinstall may have run
BUDGET = 5  # aborted by a failure budget
# Another run holds some of these VPSes: nothing was sent; retry later.
BUSY = 6
# Completed, but the recovery time (first send -> last ready) exceeded the run's RTO.
RTO_MISSED = 7
# Internal error or a fault of this machine (disk full, journal unwritable, lock lost): the
# run is recorded crashed and is resumable.
CRASHED = 70
INTERRUPTED = 130  # interrupted; resumable

TABLE = """exit codes (the same for apply, resume and retry-failed, judged from the whole run):
  0    every selected VPS ready
  1    run completed, some VPSes failed
  2    refused before anything was sent (usage, manifest, pre-flight, stale plan,
       plan for another endpoint)
  3    credentials refused
  4    VPSes remain in doubt (their reinstall may have run): check them
  5    aborted by a failure budget
  6    another run holds some of these VPSes; nothing sent, retry later
  7    completed, but over the RTO target
  70   internal error or a fault of this machine (disk full, journal unwritable, lock
       lost); run recorded crashed, resumable
  130  interrupted; resumable
  when several apply: 70 > 4 > 130 > 5 > 1 > 7 > 0 (in doubt is never hidden)
"""
