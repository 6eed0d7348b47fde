//! Properties of what parses untrusted input: any bytes or text get an answer, without a
//! panic and in bounded time.

use bytes::Bytes;
use proptest::prelude::*;
use ranch_kernel::wire::{self, ReplayGuard};
use std::time::{Duration, Instant};

/// Arbitrary multipart messages: random frames, sometimes around a delimiter, sometimes
/// signed, with JSON-ish or random parts.
fn multipart() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let part = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        Just(b"<IDS|MSG>".to_vec()),
        Just(b"{}".to_vec()),
        "\\{\"msg_type\":\"[a-z_]{0,20}\",\"msg_id\":\"[0-9]{0,4}\"\\}".prop_map(String::into_bytes),
        "[\\[\\]{}\":,a-z0-9 ]{0,80}".prop_map(String::into_bytes),
    ];
    prop::collection::vec(part, 1..10)
}

fn bounded<T>(limit: Duration, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    assert!(t.elapsed() < limit, "took {:?}", t.elapsed());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_frames_are_answered(frames in multipart(), signed in any::<bool>()) {
        let key = signed.then(|| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"key"));
        let parts: Vec<Bytes> = frames.into_iter().map(Bytes::from).collect();
        if let Ok(message) = zeromq::ZmqMessage::try_from(parts) {
            bounded(Duration::from_millis(200), || {
                let _ = wire::parse(message, &key, &ReplayGuard::default());
            });
        }
    }

    #[test]
    fn any_text_gets_a_completeness_answer(code in ".{0,400}") {
        bounded(Duration::from_secs(1), || ranch_kernel::syntax::completeness(&code));
        bounded(Duration::from_secs(1), || ranch_kernel::syntax::with_stdout_flush(&code));
    }

    #[test]
    fn nested_and_operator_heavy_code_is_answered_in_bounded_time(
        pieces in prop::collection::vec(prop_oneof![
            Just("{"), Just("}"), Just("("), Just(")"), Just("["), Just("]"), Just("<"), Just(">"),
            Just("-"), Just("!"), Just("&"), Just("|| "), Just("+1"), Just("if x "), Just("Vec<"),
            Just("\""), Just("/*"), Just("*/"), Just("'a"), Just(";"), Just(","), Just("x"), Just("1"),
        ], 0..6000),
    ) {
        let code: String = pieces.concat();
        bounded(Duration::from_secs(2), || ranch_kernel::syntax::completeness(&code));
    }
}
