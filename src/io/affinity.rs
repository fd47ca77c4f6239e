//! Pinning a thread to one core.
#![allow(unsafe_code)]

use std::io;

/// Pins the calling thread to `core`.
pub fn pin_current_thread(core: usize) -> io::Result<()> {
    if core >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "core number out of range"));
    }
    // SAFETY:
    // - `cpu_set_t` is a plain bit array for which all-zero is the valid empty set.
    // - `CPU_SET` writes bit `core`, which is in range (checked above).
    // - `sched_setaffinity(0, ..)` reads `size_of::<cpu_set_t>()` bytes from our stack value and
    //   keeps no pointer to it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The cores this process may run on, in order.
pub fn allowed_cores() -> Vec<usize> {
    // SAFETY:
    // - all-zero is a valid empty `cpu_set_t`;
    // - `sched_getaffinity` writes at most `size_of::<cpu_set_t>()` bytes into our stack value;
    // - `CPU_ISSET` only reads that value, for indices below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            return (0..n).collect();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}
