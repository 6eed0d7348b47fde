//! The magic lines are parsed from whatever a user types: any text gets a result or a
//! usage error, never a panic, in bounded time.

use proptest::prelude::*;
use ranch_magics::args;
use std::time::{Duration, Instant};

/// Text that looks like magic lines: flags, numbers (huge ones too), quotes, types.
fn magic_line() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("--timeout".to_string()),
        Just("--collective-timeout".to_string()),
        Just("--base-rank".to_string()),
        Just("--world-size".to_string()),
        Just("--port".to_string()),
        Just("--see".to_string()),
        Just("--gpus".to_string()),
        Just("--out".to_string()),
        Just("--share".to_string()),
        Just("--ctx".to_string()),
        Just("--gather".to_string()),
        Just("--help".to_string()),
        "[0-9]{1,25}".prop_map(|s| s),
        "-?[0-9]{0,3}\\.?[0-9]{0,3}e[0-9]{1,3}".prop_map(|s| s),
        Just("inf".to_string()),
        Just("NaN".to_string()),
        "[a-z_:<>,() ]{0,12}".prop_map(|s| s),
        Just("'".to_string()),
        Just("\"".to_string()),
        ".{0,8}".prop_map(|s| s),
    ];
    prop::collection::vec(token, 0..12).prop_map(|t| t.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn any_magic_line_parses_or_is_a_usage_error(line in magic_line()) {
        let t = Instant::now();
        let _ = args::parse(&line);
        let _ = args::parse_in_ddp(&line);
        prop_assert!(t.elapsed() < Duration::from_millis(500), "took {:?}", t.elapsed());
    }

    #[test]
    fn any_text_at_all(line in ".{0,200}") {
        let _ = args::parse(&line);
        let _ = args::parse_in_ddp(&line);
    }
}
