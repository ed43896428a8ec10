"""Defaults of the template checks that the command line shows in its help; importing this
module loads nothing else (so ``edis-fleet --help`` stays fast)."""

# ``cloud-init schema`` costs about 0.2 s per document: by default at most this many distinct
# rendered documents are checked.
DEFAULT_SCHEMA_DOCUMENTS = 16
