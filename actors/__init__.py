"""Actors: one OS process per protocol endpoint, built on `actors.base.Actor`."""
