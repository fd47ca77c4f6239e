//! Reading the files an operator names (the configuration, the hosts file, a CA file) so that a
//! wrong path can neither hang dnlb nor exhaust its memory: opened without blocking (a FIFO with
//! no writer would hold a load, and with it a reload or the hosts watch, for good), read only if
//! it is a regular file, and never more than a limit.

use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The largest configuration or hosts file read: far above a farm of 10,000 servers (about
/// 1 MB of TOML) or a large blocklist-style hosts file.
pub const MAX_TEXT_FILE: u64 = 64 << 20;

/// The bytes of the regular file at `path`, at most `max` of them.
pub fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is not a regular file (a folder, FIFO, socket or device)",
        ));
    }
    let too_large = || io::Error::new(io::ErrorKind::InvalidData, format!("is larger than {} MiB", max >> 20));
    if meta.len() > max {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    // The file may grow after its size was taken: never more than the limit is read.
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_large());
    }
    Ok(bytes)
}

/// The UTF-8 text of the regular file at `path`, at most [`MAX_TEXT_FILE`] bytes.
pub fn read_text(path: &Path) -> io::Result<String> {
    String::from_utf8(read_bounded(path, MAX_TEXT_FILE)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "is not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = std::env::temp_dir().join(format!("dnlb-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = dir.join("small");
        std::fs::write(&small, "a = 1\n").unwrap();
        assert_eq!(read_text(&small).unwrap(), "a = 1\n");
        assert!(read_bounded(&small, 3).unwrap_err().to_string().contains("larger than"));
        assert!(read_text(&dir).unwrap_err().to_string().contains("not a regular file"));
        assert!(read_text(Path::new("/dev/zero")).unwrap_err().to_string().contains("not a regular file"));
        let binary = dir.join("binary");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        assert!(read_text(&binary).unwrap_err().to_string().contains("UTF-8"));
        // A FIFO with no writer: refused at once instead of waiting for one.
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
        if made {
            assert!(read_text(&fifo).unwrap_err().to_string().contains("not a regular file"));
        }
        let _removed = std::fs::remove_dir_all(&dir);
    }
}
