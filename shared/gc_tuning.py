"""Interpreter settings for a service whose event loop must not stall, applied once at start-up.

- The cyclic garbage collector. A full collection walks every GC-tracked object: with what a service
  imports (~50,000 objects: functions, classes, module dicts) it takes ~20 ms, a stall of the event
  loop each time one runs. Those objects live as long as the process, so once imported they are
  collected once and frozen (``gc.freeze``: a permanent generation that collections skip); full
  collections then walk only what the service made since. Per-backend records are kept out of the
  collector's sight by their types (``gc=False`` structs: ``BackendView``, ``Candidate``, ``Upstream``;
  tuples for the policies' per-backend columns), so a proxy holding 100,000 backends pays ~2-8 ms
  for a full collection instead of ~150 ms.
- After each install of a very large pool (50,000 backends and more) the owner calls
  :func:`freeze_new_objects`: the new policy's per-backend containers (tuples of 100,000 entries) would
  otherwise be walked by the next collections, ~10-20 ms each time.
- The GIL switch interval. A proxy builds large policies in a worker thread; while one runs, the loop
  waits for the GIL up to the switch interval (5 ms by default) every time it wakes, and measured
  stalls reach 30-60 ms. At 1 ms they stay under ~10 ms; with no second thread running it costs
  nothing (the interval only matters when another thread asks for the GIL).

Measured by ``tests/unit/policies/test_background_rebuild.py`` (largest loop gap and longest collection
during 100,000-backend installs and rebuilds, under the 20 ms bound).
"""

from __future__ import annotations

import gc
import sys

SWITCH_INTERVAL_SEC = 0.001


def freeze_new_objects() -> None:
    """After a large install (a policy over tens of thousands of backends): move what is tracked now
    into the permanent generation, so that no collection walks the new per-backend containers
    (~5 ms per 100,000 entries each time one does). They are freed by reference counting when the
    next install replaces them, frozen or not; only a reference cycle that is garbage at this very
    moment would stay (the churn benchmark checks that memory stays flat)."""
    gc.freeze()


def tune_gc() -> None:
    """Collect the start-up garbage, freeze what survives, shorten the GIL switch interval (call
    once, after the imports)."""
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(SWITCH_INTERVAL_SEC)
