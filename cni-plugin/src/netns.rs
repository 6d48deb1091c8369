//! Network namespaces: opening the pod's, and briefly entering it.
//!
//! A netlink socket stays bound to the namespace it was created in, so the
//! plugin never *works* inside the pod's namespace: it enters it only to
//! create a socket ([`NetNs::run_in`]), then returns at once. Namespace
//! membership is per thread, which is why everything runs on one thread
//! (a current-thread tokio runtime).

use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    sched::{setns, CloneFlags},
    sys::statfs::{fstatfs, NSFS_MAGIC},
};

use crate::error::Error;

/// `NS_GET_NSTYPE` from `linux/nsfs.h`: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// The calling thread's own network namespace.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// An open network namespace file (a bind mount under /var/run/netns, or
/// /proc/PID/ns/net).
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens `path` and makes sure it is a network namespace. Problems are
    /// reported against `CNI_NETNS`: the runtime gave us a bad reference.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let bad = |reason: String| Error::BadNetns {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
        let fs = fstatfs(file.as_fd()).map_err(|e| bad(format!("cannot stat: {e}")))?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(bad("is not a namespace file".to_string()));
        }
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
        let nstype = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
        let nstype = Errno::result(nstype).map_err(|e| bad(format!("cannot query: {e}")))?;
        if nstype != libc::CLONE_NEWNET {
            return Err(bad("is not a network namespace".to_string()));
        }
        Ok(NetNs {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The namespace the calling thread is in.
    pub fn current() -> Result<Self, Error> {
        let file = File::open(THREAD_NETNS)
            .map_err(|e| Error::io(format!("opening {THREAD_NETNS}"), e))?;
        Ok(NetNs {
            file,
            path: PathBuf::from(THREAD_NETNS),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Runs `f` with the calling thread inside this namespace and returns to
    /// the original namespace afterwards, also if `f` panics.
    pub fn run_in<T>(&self, f: impl FnOnce() -> T) -> Result<T, Error> {
        let origin = NetNs::current()?;
        setns(self.fd(), CloneFlags::CLONE_NEWNET).map_err(|e| Error::Io {
            context: format!("entering network namespace {}", self.path.display()),
            source: e.into(),
        })?;
        let guard = Return {
            origin: Some(origin),
        };
        let value = f();
        guard.finish()?;
        Ok(value)
    }
}

/// Puts the thread back into its original namespace when dropped.
struct Return {
    origin: Option<NetNs>,
}

impl Return {
    /// The normal way back, reporting failure: a thread left in the pod's
    /// namespace would create later sockets there.
    fn finish(mut self) -> Result<(), Error> {
        match self.origin.take() {
            Some(origin) => setns(origin.fd(), CloneFlags::CLONE_NEWNET).map_err(|e| Error::Io {
                context: "returning to the original network namespace".to_string(),
                source: e.into(),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Return {
    fn drop(&mut self) {
        // Only reached while unwinding from a panic in `run_in`'s closure;
        // nothing can be reported from here, and the panic hook ends the
        // invocation with an error anyway.
        if let Some(origin) = self.origin.take() {
            let _ = setns(origin.fd(), CloneFlags::CLONE_NEWNET);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;

    #[test]
    fn missing_netns_is_code_4() {
        let err = NetNs::open(Path::new("/nonexistent/netns")).expect_err("missing");
        assert_eq!(err.code(), code::INVALID_ENVIRONMENT);
        assert!(err.to_string().contains("CNI_NETNS"), "{err}");
    }

    #[test]
    fn regular_file_is_not_a_netns() {
        let err = NetNs::open(Path::new("/proc/self/status")).expect_err("not nsfs");
        assert_eq!(err.code(), code::INVALID_ENVIRONMENT);
    }

    #[test]
    fn other_namespace_kinds_are_refused() {
        let err = NetNs::open(Path::new("/proc/self/ns/uts")).expect_err("uts");
        assert!(err.to_string().contains("not a network namespace"), "{err}");
    }

    #[test]
    fn own_netns_opens() {
        // Readable without privileges; entering it is not tested here.
        NetNs::open(Path::new("/proc/self/ns/net")).expect("own netns");
    }
}
