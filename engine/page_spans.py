"""How far back recent newest-first pages reached, to size the next one's first slice.

A page not stored in time order (a tenant's, a carrier's, the admin's) first reads a
recent slice of its range (sql.viewer.time_slices): one day, then eight. Its cost is the
granules the slice covers, one stretch per customer, so a day is often several times
what a busy tenant's page needs (the tenant's 100 newest calls reached 5-6 hours back in
the load test; benchmarks/README.md, "A first slice sized by the pages before it").

`PageSpans` remembers, per principal and page shape (sql.viewer.page_shape: which
filters, not their values), how far back the last pages reached, and proposes a first
slice a margin wider than the farthest of them. It only ever changes the cost: a slice
is used when it holds a full page, which is then exactly the whole range's page, and
otherwise the fixed slices and the whole range follow. A page that did not fill forgets
the proposal until pages fill again, so a quiet shape does not pay a useless query.

One instance per service process (api/service.py), shared by its worker threads.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Hashable
from datetime import timedelta

from cdrhouse.sql.principal import Principal
from cdrhouse.sql.viewer import ViewRequest, page_shape

#: the proposal is rounded up to this
STEP = timedelta(minutes=15)


def shape_of(principal: Principal, request: ViewRequest) -> Hashable:
    """The key pages share their reach under: who asks (not how they are labelled), and
    the page's shape."""
    return (principal.role, principal.tenant, principal.account_id), page_shape(request)


class PageSpans:
    def __init__(self, keep: int = 16, margin: float = 1.25, min_seen: int = 2,
                 max_shapes: int = 4096) -> None:
        if keep < 1 or min_seen < 1 or min_seen > keep or margin < 1 or max_shapes < 1:
            raise ValueError("PageSpans: keep >= min_seen >= 1, margin >= 1, max_shapes >= 1")
        self.keep, self.margin, self.min_seen, self.max_shapes = keep, margin, min_seen, max_shapes
        self._seen: OrderedDict[Hashable, deque[timedelta]] = OrderedDict()
        self._lock = threading.Lock()

    def first_window(self, shape: Hashable) -> timedelta | None:
        """The first slice to try for a page of `shape`, or None (no proposal yet)."""
        with self._lock:
            seen = self._seen.get(shape)
            if seen is None or len(seen) < self.min_seen:
                return None
            self._seen.move_to_end(shape)
            widest = max(seen)
        steps = math.ceil(widest * self.margin / STEP)
        return max(1, steps) * STEP

    def record(self, shape: Hashable, reach: timedelta | None) -> None:
        """A page of `shape` reached `reach` back from its top; None: it did not fill."""
        with self._lock:
            seen = self._seen.get(shape)
            if seen is None:
                seen = self._seen[shape] = deque(maxlen=self.keep)
                while len(self._seen) > self.max_shapes:
                    self._seen.popitem(last=False)
            else:
                self._seen.move_to_end(shape)
            if reach is None:
                seen.clear()            # start over: propose again after min_seen full pages
            else:
                seen.append(reach)
