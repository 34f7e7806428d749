"""Black-box tracing: per-customer behaviour on a keyed query set, read back from top-1 answers.

``key`` (the owner's black-box key and behavioural code), ``queries`` (the keyed
boundary queries), ``tilt`` (each code position as a direction of the output layer,
and reading answers back), ``embed`` (giving a copy its tilt), ``trace`` (answers to
a verdict), ``protocol`` (the HTTP protocol: server and client), ``store`` (the run
folder's black-box files and the issue/verify steps that use them).
"""
