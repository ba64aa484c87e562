//! Standard output that a closed pipe does not crash: `meshguard check --example all | head -1`
//! stops quietly when `head` has read enough, as ripgrep does, instead of panicking.

/// `println!`, except that a reader who went away (EPIPE) ends the program quietly.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::out::write_failed(&e);
        }
    }};
}

/// `print!`, with the same care.
macro_rules! print {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($arg)*) {
            $crate::out::write_failed(&e);
        }
    }};
}

/// A write to standard output failed: a closed pipe ends the program with success; anything
/// else (a full disk) is reported and ends it with failure.
pub(crate) fn write_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("meshguard: cannot write to standard output: {e}");
    std::process::exit(1);
}
