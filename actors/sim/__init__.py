"""Device simulators, themselves actors, speaking the devices' true wire formats."""
