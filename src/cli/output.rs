//! Where the command line's words go: a command's output to standard output, messages to
//! standard error. Every line the binary prints passes through here, so a closed pipe is
//! handled in one place.

use std::io::{self, Write};

/// Writes `text` and a newline to `out`. A reader that went away (`errand jobs | head -1`)
/// is not a failure: the rest is dropped and the command still succeeds, as `git log |
/// head` does. Any other write error (a full disk) is returned.
pub fn write_output(out: &mut impl Write, text: &str) -> io::Result<()> {
    let written = out
        .write_all(text.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Prints a command's output (see [`write_output`]).
pub fn print_output(text: &str) -> io::Result<()> {
    write_output(&mut io::stdout().lock(), text)
}

/// Prints one message line to standard error. If even that fails there is nowhere left
/// to say so, and a message is never worth a panic.
pub fn print_message(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts `room` bytes, then fails every write with `kind`.
    struct Closing {
        room: usize,
        kind: io::ErrorKind,
        got: Vec<u8>,
    }

    impl Write for Closing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(self.kind.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reader_that_went_away_is_not_an_error_but_a_full_disk_is() {
        let mut gone = Closing {
            room: 4,
            kind: io::ErrorKind::BrokenPipe,
            got: Vec::new(),
        };
        assert!(write_output(&mut gone, "line one\nline two").is_ok());
        assert_eq!(gone.got, b"line");
        let mut full = Closing {
            room: 4,
            kind: io::ErrorKind::StorageFull,
            got: Vec::new(),
        };
        let err = write_output(&mut full, "line one").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        let mut all = Vec::new();
        write_output(&mut all, "a\nb").unwrap();
        assert_eq!(all, b"a\nb\n");
    }
}
