//! A client's `x-request-id`: kept exactly when it is 1 to 128 visible ASCII characters (it is
//! logged and sent back as is), refused otherwise, for any value hyper accepts.
#![no_main]

use effe_host::fuzzing::usable_request_id;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return; // hyper never hands such a value over
    };
    let usable = (1..=128).contains(&data.len()) && data.iter().all(u8::is_ascii_graphic);
    match usable_request_id(&value) {
        Some(id) => {
            assert!(usable, "{data:?} kept");
            assert_eq!(id.as_bytes(), data);
        }
        None => assert!(!usable, "{data:?} refused"),
    }
});
