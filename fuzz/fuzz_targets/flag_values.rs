//! Durations, sizes, booleans and listen addresses, as flags and `EFFE_*` variables give them:
//! any text is parsed or refused in one line, and what is parsed reads back the same.
#![no_main]

use std::time::Duration;

use effe_host::fuzzing::{parse_bool, parse_duration, parse_size, parse_timeout, Listen};
use libfuzzer_sys::fuzz_target;

/// The longest duration a flag takes (one year as humantime counts it).
const YEAR: Duration = Duration::from_secs(31_557_600);

/// A refusal is printed as `effe-host: …: why`, one line.
fn one_line(why: &str) {
    assert!(!why.is_empty() && !why.contains(['\n', '\r']), "{why:?}");
}

fuzz_target!(|data: &[u8]| {
    let s = &*String::from_utf8_lossy(data);

    match parse_duration(s) {
        Ok(d) => {
            assert!(d <= YEAR, "{s:?} gave {d:?}");
            assert_eq!(
                parse_duration(&format!("{}ns", d.as_nanos())),
                Ok(d),
                "{s:?}"
            );
        }
        Err(why) => one_line(&why),
    }
    match parse_timeout(s) {
        Ok(d) => assert!(!d.is_zero() && parse_duration(s) == Ok(d), "{s:?}"),
        Err(why) => {
            one_line(&why);
            assert!(parse_duration(s).map_or(true, |d| d.is_zero()), "{s:?}");
        }
    }

    match parse_size(s) {
        Ok(n) => {
            assert_eq!(parse_size(&n.to_string()), Ok(n), "{s:?}");
            assert_eq!(parse_size(&format!("{n}B")), Ok(n), "{s:?}");
        }
        Err(why) => one_line(&why),
    }

    match parse_bool(s) {
        Ok(b) => assert_eq!(parse_bool(&b.to_string()), Ok(b), "{s:?}"),
        Err(why) => one_line(&why),
    }

    match Listen::parse(s) {
        Ok(listen) => {
            let shown = listen.to_string();
            assert!(
                !shown.contains(char::is_whitespace),
                "{s:?} shown as {shown:?}"
            );
            assert_eq!(
                Listen::parse(&shown),
                Ok(listen),
                "{s:?} shown as {shown:?}"
            );
        }
        Err(why) => one_line(&why),
    }
});
