"""The router's lease table without sockets: grants, refusals, renewal by traffic, expiry,
regaining a lapsed lease, release, and the generation (clocks passed in)."""

from __future__ import annotations

from broker.router.leases import MAX_TTL, MIN_TTL, LeaseTable

T0 = 1000.0
WALL = 1_700_000_000.0


def events(claim_or_list: object) -> list[str]:
    evs = getattr(claim_or_list, "events", claim_or_list)
    assert isinstance(evs, (list, tuple))
    return [e.event for e in evs]


def test_a_free_name_is_granted_and_a_second_epoch_refused_with_the_holder() -> None:
    t = LeaseTable()
    first = t.claim("b1", 11, "hostA", 100, 3.0, T0, WALL)
    assert first.granted and events(first) == ["granted"]
    assert t.held == {"b1": 11} and first.lease.generation == 1
    second = t.claim("b1", 22, "hostB", 200, 3.0, T0 + 1, WALL + 1)
    assert not second.granted
    assert (second.lease.epoch, second.lease.host, second.lease.pid) == (11, "hostA", 100)
    assert second.lease.since == WALL
    assert events(second) == ["refused"]
    refused = second.events[0].data()
    assert refused["claimant"] == {"epoch": 22, "host": "hostB", "pid": 200}
    assert "held by epoch 11 on hostA pid 100" in second.events[0].text()
    assert t.held == {"b1": 11}


def test_the_holder_claiming_again_renews_without_an_event_or_a_new_generation() -> None:
    t = LeaseTable()
    t.claim("b1", 11, "hostA", 100, 3.0, T0, WALL)
    again = t.claim("b1", 11, "hostA", 100, 3.0, T0 + 2.5, WALL)
    assert again.granted and again.events == () and again.lease.generation == 1
    assert t.expire(T0 + 5.0) == []  # renewed at 2.5 for 3 s
    assert events(t.expire(T0 + 5.5)) == ["expired"]


def test_traffic_renews_only_the_holding_epoch() -> None:
    t = LeaseTable()
    t.claim("b1", 11, "hostA", 100, 3.0, T0, WALL)
    assert t.renew(("b1", 22), T0 + 2.0) is None  # another epoch's traffic: no renewal
    assert t.renew(("b1", 11), T0 + 2.0) is None
    assert t.renew(("other", 1), T0 + 2.0) is None  # unleased names cost nothing
    assert t.holder("b1", T0 + 4.9) is not None
    assert t.holder("b1", T0 + 5.0) is None


def test_an_expired_lease_is_granted_to_a_new_claimant_with_a_higher_generation() -> None:
    t = LeaseTable()
    t.claim("b1", 11, "hostA", 100, 3.0, T0, WALL)
    late = t.claim("b1", 22, "hostB", 200, 3.0, T0 + 3.5, WALL + 3.5)  # not swept yet
    assert late.granted and events(late) == ["expired", "granted"]
    assert late.lease.generation == 2 and t.held == {"b1": 22}
    assert late.events[1].data()["previous"]["epoch"] == 11


def test_a_lapsed_holder_regains_its_name_by_traffic_unless_another_claimed_it() -> None:
    t = LeaseTable()
    t.claim("b1", 11, "hostA", 100, 3.0, T0, WALL)
    assert events(t.expire(T0 + 3.0)) == ["expired"]
    assert t.held == {} and bool(t)  # lapsed: remembered
    back = t.renew(("b1", 11), T0 + 10.0)  # its traffic comes back, nobody else claimed
    assert back is not None and back.event == "regained"
    assert t.held == {"b1": 11} and back.lease.generation == 2

    t.expire(T0 + 13.0)
    assert t.claim("b1", 22, "hostB", 200, 3.0, T0 + 14.0, WALL).granted
    assert t.renew(("b1", 11), T0 + 14.5) is None  # too late: fenced, not regained
    assert t.held == {"b1": 22}


def test_release_frees_the_name_at_once_and_only_for_the_holder() -> None:
    t = LeaseTable()
    t.claim("b1", 11, "hostA", 100, 3.0, T0, WALL)
    assert t.release("b1", 22) is None and t.held == {"b1": 11}
    ev = t.release("b1", 11)
    assert ev is not None and ev.event == "released"
    assert t.held == {} and not t
    assert t.claim("b1", 22, "hostB", 200, 3.0, T0 + 0.1, WALL).granted


def test_ttl_is_clamped_and_the_table_lists_live_leases() -> None:
    t = LeaseTable()
    assert t.claim("a", 1, "h", 1, 0.0001, T0, WALL).lease.ttl == MIN_TTL
    assert t.claim("b", 1, "h", 1, 1e9, T0, WALL).lease.ttl == MAX_TTL
    table = t.table(T0 + 1.0)
    assert list(table) == ["b"]  # a's 0.2 s are over
    assert table["b"]["expires_in"] == MAX_TTL - 1.0
    assert {"epoch", "host", "pid", "since", "ttl", "generation"} <= set(table["b"])


def test_generation_increases_on_every_change_of_holder() -> None:
    t = LeaseTable()
    gens = [t.claim("b1", 1, "h", 1, 3.0, T0, WALL).lease.generation]
    t.release("b1", 1)
    gens.append(t.claim("b1", 2, "h", 2, 3.0, T0, WALL).lease.generation)
    gens.append(t.claim("b1", 3, "h", 3, 3.0, T0 + 4.0, WALL).lease.generation)
    gens.append(t.claim("b1", 3, "h", 3, 3.0, T0 + 5.0, WALL).lease.generation)  # renewal
    assert gens == [1, 2, 3, 3]


def test_hold_all_keeps_silent_holders_while_the_router_cannot_see_traffic() -> None:
    t = LeaseTable()
    t.claim("b1", 11, "hostA", 100, 3.0, T0, WALL)
    t.hold_all(T0 + 2.9)  # the router read no ingress since T0 (journal blocked)
    assert not t.claim("b1", 22, "hostB", 200, 3.0, T0 + 4.0, WALL).granted
    assert t.expire(T0 + 5.8) == []
    assert events(t.expire(T0 + 5.9)) == ["expired"]


def test_a_holder_seen_dead_on_its_own_machine_is_replaced_at_once_by_nobody_else() -> None:
    t = LeaseTable()
    t.claim("b1", 11, "hostA", 100, 3.0, T0, WALL, machine="boot1/pid:[1]")
    # another machine cannot see pid 100: its word that the holder died counts for nothing
    other = t.claim("b1", 22, "hostA", 200, 3.0, T0 + 0.1, WALL, machine="boot2/pid:[1]",
                    replaces=11)
    assert not other.granted
    # no machine id, or the wrong epoch: refused too
    assert not t.claim("b1", 22, "hostA", 200, 3.0, T0 + 0.1, WALL, replaces=11).granted
    assert not t.claim("b1", 22, "hostA", 200, 3.0, T0 + 0.1, WALL, machine="boot1/pid:[1]",
                       replaces=10).granted
    same = t.claim("b1", 33, "hostA", 300, 3.0, T0 + 0.2, WALL, machine="boot1/pid:[1]",
                   replaces=11)
    assert same.granted and events(same) == ["replaced", "granted"]
    assert t.held == {"b1": 33} and same.lease.machine == "boot1/pid:[1]"
    assert same.events[1].data()["previous"]["epoch"] == 11
