//! `--syslog` / `EFFE_SYSLOG`: any text is a target that says exactly what was given, or a
//! one-line refusal.
#![no_main]

use std::path::Path;

use effe_host::fuzzing::SyslogTarget;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = &*String::from_utf8_lossy(data);
    match SyslogTarget::parse(s) {
        Ok(SyslogTarget::Off) => assert_eq!(s, "off"),
        Ok(SyslogTarget::Udp(addr)) => assert_eq!(format!("udp://{addr}"), s),
        Ok(SyslogTarget::Tcp(addr)) => assert_eq!(format!("tcp://{addr}"), s),
        Ok(SyslogTarget::Unix(path)) => {
            assert!(s.starts_with('/'), "{s:?}");
            assert_eq!(path, Path::new(s));
        }
        Err(why) => {
            assert!(why.starts_with("--syslog "), "{why:?}");
            assert!(!why.contains(['\n', '\r']), "{why:?}");
        }
    }
});
