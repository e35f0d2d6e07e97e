"""Test helpers that are real peers: a TCP echo device (`echo.EchoServer`) and the actor that
talks to it (`actors.EchoActor`, site type ``"tests.support.actors:EchoActor"``)."""
