"""Public import path of the Bus client for outside tools: ``from broker.bus import Bus``.

The implementation lives in `broker.client.bus`.
"""

from broker.client.bus import Bus, client_name
from broker.client.delivery import Delivery

__all__ = ["Bus", "Delivery", "client_name"]
