"""Operations tooling: the supervisord file (`supervisord`), the watchdog that turns crash loops
into alarms (`watchdog`), site health (`status`, `top`, `heartbeats`). Clients of the bus; the
router knows nothing of them."""
