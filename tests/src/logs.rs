//! Log capture for tests that prove no secret reaches a log line: every `tracing` event of the
//! test process, at debug level, goes to one buffer that tests grep.

use std::io::Write;
use std::sync::{Mutex, Once};

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capture once per test process, at debug for Keygate's crates.
pub fn capture() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing_subscriber::fmt()
            .with_env_filter("keygate=debug,keygate_operator=debug,keygate_proxy=debug,kube=info")
            .with_writer(|| Sink)
            .with_ansi(false)
            .init();
    });
}

/// Everything captured so far.
pub fn captured() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

/// Fails if `secret` appears in any log line captured so far, or if nothing was captured at all
/// (a broken capture must not pass as "nothing leaked").
pub fn assert_not_logged(secret: &str) {
    let logs = captured();
    assert!(logs.contains("keygate"), "no logs were captured; the capture is broken");
    assert!(!logs.contains(secret), "a secret value reached the logs");
}
