"""The bottom of the house: how results are written and kept, with neither torch nor any other package of
this project.

- :mod:`storage.atomic`: the one atomic file writer (and the disk-full error it raises);
- :mod:`storage.records`: the resumable record store (one JSON file per key, stamped with its configuration,
  a checksum of its content and the version of the code that made it);
- :mod:`storage.code_version`: that version, and the policy for cache entries made by other code.

``nets``, ``attacks``, ``proofs_check`` and ``experiments`` may all import it (tests/test_layering.py).
"""
