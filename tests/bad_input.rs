//! Bad input: each kind of malformed or hostile delivered event gets its own typed error,
//! the actor keeps serving, and nothing stored changes (view, frontier and history are
//! the same before and after).
#![allow(clippy::unwrap_used)]

mod common;

use actix::{Actor, Addr};
use common::{remote_event, remote_lane, run_site, TrailStream};
use gundb::storage::{SledStorage, Storage};
use gundb::{codec, Deliver, Delivered, Emit, Event, GetView, History, Seq, StreamActor, StreamError, StreamId};
use std::sync::Arc;

type Mangle = fn(&mut Event, StreamId);

/// One scenario: how the event is spoiled, and the error it must get. The event then gets
/// the id of its new content, as a forger would give it: each check below must hold on its
/// own, not only because the id no longer matches (see `an_altered_event_is_refused`).
fn check(name: &'static str, mangle: Mangle, expected: fn(&StreamError) -> bool) {
    check_as(name, mangle, true, expected);
}

fn check_as(name: &'static str, mangle: Mangle, new_id: bool, expected: fn(&StreamError) -> bool) {
    run_site(move || async move {
        let stream = StreamId::from_u128(7);
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let actor = StreamActor::<TrailStream>::open(storage, stream).unwrap().start();
        let lane = remote_lane(2, stream);
        actor.send(Emit::new(1)).await.unwrap().unwrap();
        actor.send(Deliver(remote_event(lane, 1, 1, 10))).await.unwrap().unwrap();
        let before = state(&actor).await;

        let mut bad = remote_event(lane, 2, 2, 20);
        mangle(&mut bad, stream);
        if new_id {
            bad.id = bad.content_id();
        }
        let error = actor.send(Deliver(bad)).await.unwrap().unwrap_err();
        assert!(expected(&error), "{name}: unexpected error {error:?}");
        assert!(!error.to_string().is_empty());

        assert_eq!(state(&actor).await, before, "{name}: something stored changed");
        // Still serving: a good event is taken after the bad one.
        let good = actor.send(Deliver(remote_event(lane, 2, 2, 20))).await.unwrap().unwrap();
        assert_eq!(good, Delivered::Applied, "{name}");
    });
}

async fn state(actor: &Addr<StreamActor<TrailStream>>) -> (Vec<u64>, gundb::VectorClock, Vec<Event>) {
    let view = actor.send(GetView::new()).await.unwrap().unwrap();
    let history = actor.send(History { after: None, limit: 100 }).await.unwrap().unwrap();
    (view.view.0, view.frontier, history.events)
}

/// An event changed on the way but keeping its id, and one that claims the order key of an
/// event of another lane (same counter, time and id, so it would take its place in
/// canonical order): neither id is its content's, so both are refused as altered.
#[test]
fn an_altered_event_is_refused() {
    check_as(
        "altered payload",
        |e, _| e.payload = codec::encode(&21u64).unwrap(),
        false,
        |e| matches!(e, StreamError::IdMismatch { .. }),
    );
    check_as(
        "colliding key",
        |e, stream| {
            let other = remote_event(remote_lane(3, stream), 1, 2, 30);
            e.id = other.id;
            e.timestamp_ms = other.timestamp_ms;
        },
        false,
        |e| matches!(e, StreamError::IdMismatch { .. }),
    );
}

/// A payload that does not decode (garbage, or a newer build's event type) is not bad
/// input to refuse: the event is stored and counted, the view skips it, and the lane's
/// next event is folded (see `tests/unfoldable.rs`).
#[test]
fn a_payload_that_does_not_decode_is_stored_and_skipped() {
    for payload in [vec![codec::FORMAT_VERSION, 0xFF, 0xFF], vec![99, 1]] {
        run_site(move || async move {
            let stream = StreamId::from_u128(7);
            let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
            let actor = StreamActor::<TrailStream>::open(storage, stream).unwrap().start();
            let lane = remote_lane(2, stream);
            actor.send(Deliver(remote_event(lane, 1, 1, 10))).await.unwrap().unwrap();
            let mut garbage = remote_event(lane, 2, 2, 0);
            garbage.payload = payload.clone();
            garbage.id = garbage.content_id();
            let outcome = actor.send(Deliver(garbage.clone())).await.unwrap().unwrap();
            assert_eq!(outcome, Delivered::Unfolded, "{payload:?}");
            actor.send(Deliver(remote_event(lane, 3, 3, 30))).await.unwrap().unwrap();
            let view = actor.send(GetView::new()).await.unwrap().unwrap();
            assert_eq!((view.view.0, view.unfolded), (vec![10, 30], 1), "{payload:?}");
            let (_, _, history) = state(&actor).await;
            assert_eq!(history[1], garbage, "{payload:?}: stored as it came");
        });
    }
}

#[test]
fn an_event_of_another_stream_is_refused() {
    check(
        "stream",
        |e, _| {
            e.lane.stream = StreamId::from_u128(8);
            e.clock = [(e.lane, e.seq)].into_iter().collect();
        },
        |e| matches!(e, StreamError::WrongStream { .. }),
    );
    check("type", |e, _| e.stream_type = "other.type".into(), |e| matches!(e, StreamError::WrongStreamType { .. }));
}

#[test]
fn an_event_whose_seq_skips_ahead_is_refused() {
    check(
        "gap",
        |e, _| {
            e.seq = Seq(3);
            e.clock.set(e.lane, Seq(3));
        },
        |e| matches!(e, StreamError::SeqGap { expected: Seq(2), got: Seq(3), .. }),
    );
}

#[test]
fn a_clock_without_its_own_lane_at_its_seq_is_refused() {
    check("own lane", |e, _| e.clock.set(e.lane, Seq(1)), |e| matches!(e, StreamError::MalformedClock { .. }));
    check("no lane", |e, _| e.clock = gundb::VectorClock::new(), |e| matches!(e, StreamError::MalformedClock { .. }));
}

#[test]
fn a_missing_dependency_and_a_forged_lamport_are_refused() {
    check(
        "dependency",
        |e, stream| e.clock.set(remote_lane(3, stream), Seq(1)),
        |e| matches!(e, StreamError::DependencyMissing { needed: Seq(1), .. }),
    );
    check("lamport", |e, _| e.lamport = 1, |e| matches!(e, StreamError::LamportNotNext { expected: 2, .. }));
    check("lamport inflated", |e, _| e.lamport = 3, |e| matches!(e, StreamError::LamportNotNext { expected: 2, .. }));
    // A counter near u64::MAX would stop every later local write of the stream.
    check("lamport range", |e, _| e.lamport = u64::MAX, |e| matches!(e, StreamError::LamportOutOfRange { .. }));
}

#[test]
fn a_second_event_on_a_used_lane_and_seq_is_an_equivocation() {
    check(
        "equivocation",
        |e, _| {
            e.seq = Seq(1);
            e.clock.set(e.lane, Seq(1));
            e.lamport = 1;
        },
        |e| matches!(e, StreamError::Equivocation { seq: Seq(1), .. }),
    );
}

/// A copy of a delivered event is not an error: it is dropped and reported as a duplicate.
#[test]
fn a_copy_of_a_delivered_event_is_a_duplicate() {
    run_site(|| async {
        let stream = StreamId::from_u128(7);
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let actor = StreamActor::<TrailStream>::open(storage, stream).unwrap().start();
        let event = remote_event(remote_lane(2, stream), 1, 1, 10);
        assert_eq!(actor.send(Deliver(event.clone())).await.unwrap().unwrap(), Delivered::Applied);
        assert_eq!(actor.send(Deliver(event)).await.unwrap().unwrap(), Delivered::Duplicate);
        assert_eq!(actor.send(GetView::new()).await.unwrap().unwrap().view.0, vec![10]);
    });
}

/// Only this site writes its own lane: an event claiming it from elsewhere is refused. A
/// copy of a delivered event with its id but another time is a forgery of it: refused as
/// altered, and with the id of its content as an equivocation, rather than taken for a
/// harmless copy. Nothing stored changes.
#[test]
fn a_forged_own_lane_and_a_forged_copy_are_refused() {
    run_site(|| async {
        let stream = StreamId::from_u128(7);
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let own = gundb::Lane::new(storage.site_id(), stream);
        let actor = StreamActor::<TrailStream>::open(storage, stream).unwrap().start();
        actor.send(Emit::new(1)).await.unwrap().unwrap();
        let remote = remote_event(remote_lane(2, stream), 1, 1, 10);
        actor.send(Deliver(remote.clone())).await.unwrap().unwrap();
        let before = state(&actor).await;

        let forged_own = remote_event(own, 2, 2, 20);
        let error = actor.send(Deliver(forged_own)).await.unwrap().unwrap_err();
        assert!(matches!(error, StreamError::OwnLane { seq: Seq(2), .. }), "{error:?}");

        let copy = actor.send(Deliver(remote.clone())).await.unwrap().unwrap();
        assert_eq!(copy, Delivered::Duplicate, "a true copy is a copy");
        let mut forged_copy = Event { timestamp_ms: remote.timestamp_ms + 1, ..remote };
        let error = actor.send(Deliver(forged_copy.clone())).await.unwrap().unwrap_err();
        assert!(matches!(error, StreamError::IdMismatch { .. }), "its id is not its content's: {error:?}");
        forged_copy.id = forged_copy.content_id();
        let error = actor.send(Deliver(forged_copy)).await.unwrap().unwrap_err();
        assert!(matches!(error, StreamError::Equivocation { seq: Seq(1), .. }), "{error:?}");
        assert_eq!(state(&actor).await, before, "nothing stored changed");
    });
}
