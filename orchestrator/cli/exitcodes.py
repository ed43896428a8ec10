"""Process exit codes, documented in the README and in ``--help``."""

OK = 0
FAILED = 1
USAGE = 2
ABORTED = 3
IN_DOUBT = 4
INTERRUPTED = 130
