"""Re-run issue 16's hostile probe (items 1-12) against real service processes; print fixed / NOT per item.

Starts two `uvicorn main:app` processes from this checkout on loopback ports, each with its own
temporary data directory (MLflow off, tiny runs): an open one and one with API_KEY set. When run as
root, the open one runs without root's file privileges (`setpriv`), so file modes bind it as they bind
a deployed service (items 4, 5, 9 need that; they are reported as not probed otherwise).

    .venv/bin/python scripts/probe_reliability.py            # exit status 1 when an item is not fixed
    .venv/bin/python scripts/probe_reliability.py 4 5        # only items 4 and 5

Waits are generous (20 min per run): on a crowded 2-core machine a 2,560-step run took 6 minutes.
"""

from __future__ import annotations

import sys

from probe_items import probes, results
from probe_service import CAN_DROP_PRIVILEGES, KEY, Service


def main() -> int:
    """`probe_reliability.py [ITEM ...]`: only those item numbers (default: all twelve)."""
    only = set(sys.argv[1:])
    open_ = Service("open", {}, drop_privileges=CAN_DROP_PRIVILEGES)
    keyed = Service("keyed", {"API_KEY": KEY}, drop_privileges=False)
    try:
        for number, probe in enumerate(probes(open_, keyed), start=1):
            if not only or str(number) in only:
                probe()
    finally:
        open_.close()
        keyed.close()
    fixed = sum(ok for _, ok, _ in results)
    print(f"\n{fixed}/{len(results)} items fixed")
    return 0 if fixed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
