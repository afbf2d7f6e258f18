//! Unit tests of the fault settings, the switch and the injected latency (on a paused clock).

use std::time::Duration;

use prometheus::IntCounter;

use super::{FaultSwitch, Faults, FaultsError, MAX_LATENCY_MS};

fn parse(json: &str) -> Faults {
    serde_json::from_str(json).unwrap()
}

#[test]
fn every_field_is_optional_and_unknown_ones_are_refused() {
    assert_eq!(parse("{}"), Faults::default());
    assert!(parse("{}").is_none());
    let f = parse(r#"{"empty": true, "latency_ms": 5}"#);
    assert_eq!((f.empty, f.latency_ms, f.pause_ingest), (true, 5, false));
    assert!(!f.is_none());
    assert!(serde_json::from_str::<Faults>(r#"{"latency": 5}"#).is_err());
    assert!(serde_json::from_str::<Faults>(r#"{"latency_ms": -1}"#).is_err());
}

#[test]
fn error_rate_is_a_fraction_and_latency_is_bounded() {
    for ok in [0.0, 0.5, 1.0] {
        assert!(parse(&format!(r#"{{"error_rate": {ok}}}"#)).validate().is_ok());
    }
    for bad in [-0.1, 1.01, f64::NAN] {
        let f = Faults {
            error_rate: bad,
            ..Faults::default()
        };
        assert!(matches!(f.validate(), Err(FaultsError::Invalid(_))), "{bad}");
    }
    let slow = Faults {
        latency_ms: MAX_LATENCY_MS + 1,
        ..Faults::default()
    };
    assert!(matches!(slow.validate(), Err(FaultsError::Invalid(_))));
}

#[test]
fn error_rate_zero_never_fails_and_one_always_does() {
    let never = Faults::default();
    let always = Faults {
        error_rate: 1.0,
        ..Faults::default()
    };
    assert!((0..1000).all(|_| !never.draws_error() && always.draws_error()));
}

#[test]
fn switch_refuses_faults_unless_allowed() {
    let off = FaultSwitch::new(false);
    let f = Faults {
        empty: true,
        ..Faults::default()
    };
    assert!(matches!(off.set(f), Err(FaultsError::NotAllowed)));
    assert_eq!(off.active(), None);
    let on = FaultSwitch::new(true);
    on.set(f).unwrap();
    assert_eq!(on.active(), Some(f));
    // Setting nothing is clearing.
    on.set(Faults::default()).unwrap();
    assert_eq!(on.active(), None);
    on.set(f).unwrap();
    on.clear();
    assert_eq!((on.active(), on.current()), (None, Faults::default()));
}

#[tokio::test]
async fn pause_watch_flips_only_when_the_pause_does() {
    let switch = FaultSwitch::new(true);
    let mut pause = switch.pause_watch();
    let paused = Faults {
        pause_ingest: true,
        ..Faults::default()
    };
    switch.set(paused).unwrap();
    pause.changed().await.unwrap();
    assert!(*pause.borrow_and_update());
    // Another fault on top of the pause does not wake the tailer.
    switch
        .set(Faults {
            latency_ms: 1,
            ..paused
        })
        .unwrap();
    assert!(!pause.has_changed().unwrap());
    switch.clear();
    pause.changed().await.unwrap();
    assert!(!*pause.borrow());
}

#[tokio::test(start_paused = true)]
async fn latency_holds_the_answer_exactly_that_long() {
    let switch = FaultSwitch::new(true);
    let errors = IntCounter::new("e", "e").unwrap();
    let latency = Faults {
        latency_ms: 250,
        ..Faults::default()
    };
    switch.set(latency).unwrap();
    let answer = switch.before_answer(&errors);
    tokio::pin!(answer);
    assert!(futures::poll!(answer.as_mut()).is_pending());
    tokio::time::advance(Duration::from_millis(249)).await;
    assert!(futures::poll!(answer.as_mut()).is_pending());
    tokio::time::advance(Duration::from_millis(1)).await;
    match futures::poll!(answer.as_mut()) {
        std::task::Poll::Ready(Ok(Some(f))) => assert_eq!(f, latency),
        other => panic!("expected the faults after the delay, got {other:?}"),
    }
    switch.clear();
    assert!(matches!(switch.before_answer(&errors).await, Ok(None)));
    assert_eq!(errors.get(), 0);
}

#[tokio::test]
async fn injected_errors_are_counted() {
    let switch = FaultSwitch::new(true);
    let errors = IntCounter::new("e", "e").unwrap();
    switch
        .set(Faults {
            error_rate: 1.0,
            ..Faults::default()
        })
        .unwrap();
    assert!(switch.before_answer(&errors).await.is_err());
    assert!(switch.before_answer(&errors).await.is_err());
    assert_eq!(errors.get(), 2);
}
