"""A small service written to pass ``mypy --strict`` (CI runs it on this file and on the
oxbus package): annotated declarations, a model answer, typed headers and cache keys.

Deploy it like any module (``oxbus deploy python-worker/examples/typed_service.py``);
``GET`` through a channel with ``?order_id=7`` answers the order as JSON.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from decimal import Decimal
from typing import List, Optional

from oxbus import Model, Service
from oxbus.simpleio import Int


@dataclass(init=False)
class Order(Model):
    order_id: int
    total: Decimal
    placed: datetime.date
    tenant: Optional[str] = None


class GetOrder(Service):
    name: str = 'examples.get-order'
    input = Int('order_id')
    output = Order

    def handle(self) -> None:
        order_id: int = self.request.input.order_id
        tenant: Optional[str] = self.request.http.headers.get('x-tenant')
        seen: List[str] = self.cache.default.keys('order:')
        self.logger.info('order %d read', order_id, extra={'seen': len(seen)})
        order = Order()
        order.order_id = order_id
        order.total = Decimal('9.90')
        order.placed = datetime.date(2024, 5, 1)
        order.tenant = tenant
        self.response.payload = order
