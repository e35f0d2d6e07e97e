"""Public import path of the Bus client for outside tools: ``from broker.bus import Bus``.

The implementation lives in `broker.client.bus`.
"""

from broker.client.bus import Bus, client_name
from broker.client.delivery import Delivery
from broker.wire.errors import BusError, BusFull, RequestTimeout

__all__ = ["Bus", "BusError", "BusFull", "Delivery", "RequestTimeout", "client_name"]
