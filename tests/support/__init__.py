"""Test helpers that are real peers: a TCP echo device (`echo.EchoServer`) and the actor that
talks to it (`actors.EchoActor`, site type ``"tests.support.actors:EchoActor"``), a
fault-injecting proxy (`hostile`), Mosquitto (`mosquitto`), a throw-away PKI (`certs`); and
`stack.Stack`, which runs a site's router, actors and simulators as ``sctl`` processes on
loopback for one test."""
