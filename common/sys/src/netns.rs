//! Network namespaces, one type for every use: the CNI plugin opens the
//! runtime's (`CNI_NETNS`) and briefly enters it; the lab and the tests
//! create named ones the way iproute2 does (a bind mount of the namespace
//! file under /run/netns, so `ip netns` shows them) and run threads and
//! commands inside.
//!
//! Namespace membership is per thread. A netlink socket stays bound to the
//! namespace it was created in, so callers enter a namespace only to open
//! sockets ([`Netns::run_in`], same thread, back at once) or do all their
//! work on a thread of its own ([`Netns::run`]).

use std::{
    ffi::OsStr,
    fs::File,
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::{Path, PathBuf},
    process::Command,
};

use nix::{
    errno::Errno,
    mount::{mount, umount2, MntFlags, MsFlags},
    sched::{setns, unshare, CloneFlags},
    sys::statfs::{fstatfs, NSFS_MAGIC},
};

/// Where named namespaces live (iproute2's convention).
pub const NETNS_DIR: &str = "/run/netns";

/// The calling thread's own network namespace.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// `NS_GET_NSTYPE` from `linux/nsfs.h`: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// A network namespace by path. Handles from [`Netns::create`] delete the
/// namespace when dropped (unless [`Netns::keep`] says otherwise); the
/// others never do.
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    /// Held open by [`Netns::open`], so the handle keeps naming the same
    /// namespace even if its path is unmounted meanwhile.
    file: Option<File>,
    owned: bool,
}

impl Netns {
    /// Opens `path` and checks that it is a network namespace file (a bind
    /// mount under /run/netns, or /proc/PID/ns/net). Errors say what is
    /// wrong with the path.
    pub fn open(path: &Path) -> io::Result<Self> {
        let bad = |reason: String| io::Error::new(io::ErrorKind::InvalidInput, reason);
        let file = File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
        let fs = fstatfs(file.as_fd()).map_err(|e| bad(format!("cannot stat: {e}")))?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(bad("is not a namespace file".to_owned()));
        }
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
        let nstype = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
        let nstype = Errno::result(nstype).map_err(|e| bad(format!("cannot query: {e}")))?;
        if nstype != libc::CLONE_NEWNET {
            return Err(bad("is not a network namespace".to_owned()));
        }
        Ok(Self {
            path: path.to_owned(),
            file: Some(file),
            owned: false,
        })
    }

    /// The namespace the calling thread is in.
    pub fn current() -> io::Result<Self> {
        Ok(Self {
            path: PathBuf::from(THREAD_NETNS),
            file: Some(File::open(THREAD_NETNS)?),
            owned: false,
        })
    }

    /// Creates the named namespace `/run/netns/<name>`; fails if it already
    /// exists. Its loopback is up, as in any namespace a runtime prepares.
    pub fn create(name: &str) -> io::Result<Self> {
        let dir = Path::new(NETNS_DIR);
        ensure_netns_dir(dir)?;
        let path = dir.join(name);
        File::options().write(true).create_new(true).open(&path)?;
        let target = path.clone();
        // unshare() affects only the calling thread, so do it on a
        // throwaway thread and keep the namespace alive by bind-mounting it.
        let made = std::thread::spawn(move || -> io::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(nix_io)?;
            mount(
                Some(THREAD_NETNS),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(nix_io)
        })
        .join()
        .map_err(|_| io::Error::other("netns creation thread panicked"))?;
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        let ns = Self {
            path,
            file: None,
            owned: true,
        };
        ns.run(set_loopback_up)??;
        Ok(ns)
    }

    /// Refers to the named namespace `/run/netns/<name>`, which may or may
    /// not exist, without owning it.
    pub fn existing(name: &str) -> Self {
        Self {
            path: Path::new(NETNS_DIR).join(name),
            file: None,
            owned: false,
        }
    }

    /// The name under /run/netns (the file name of the path).
    pub fn name(&self) -> &str {
        self.path
            .file_name()
            .and_then(OsStr::to_str)
            .unwrap_or_default()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the namespace in place when dropped.
    pub fn keep(mut self) -> Self {
        self.owned = false;
        self
    }

    /// The namespace file this handle holds open: handles from
    /// [`Netns::open`] and [`Netns::current`] do.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.file.as_ref().map(File::as_fd)
    }

    fn file(&self) -> io::Result<File> {
        match &self.file {
            Some(file) => file.try_clone(),
            None => File::open(&self.path),
        }
    }

    /// Runs `f` with the calling thread inside this namespace and returns
    /// the thread to where it was afterwards, also if `f` panics.
    pub fn run_in<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        let guard = self.enter()?;
        let value = f();
        guard.leave()?;
        Ok(value)
    }

    /// Moves the calling thread into this namespace until the guard is
    /// dropped (or [`Entered::leave`] reports how the way back went).
    pub fn enter(&self) -> io::Result<Entered> {
        let origin = File::open(THREAD_NETNS)?;
        let target = self.file()?;
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("entering network namespace {}: {e}", self.path.display()),
            )
        })?;
        Ok(Entered {
            origin: Some(origin),
        })
    }

    /// Runs `f` on a new thread inside the namespace. Sockets opened there
    /// stay in the namespace after `f` returns.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        let file = self.file()?;
        std::thread::spawn(move || -> io::Result<T> {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(nix_io)?;
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("thread in netns panicked"))?
    }

    /// A command that starts inside the namespace (network only; the mount
    /// namespace stays the caller's, so bpffs pins remain visible).
    pub fn command(&self, program: impl AsRef<OsStr>) -> io::Result<Command> {
        command_in(&self.path, program)
    }

    /// Runs `ip ARGS` (iproute2) inside the namespace; stderr becomes the
    /// error. Scaffolding for tests, the lab and benchmarks only: product
    /// code configures links over netlink.
    pub fn ip(&self, args: &str) -> io::Result<()> {
        let out = self.command("ip")?.args(args.split_whitespace()).output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "ip {args}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Deletes the named namespace now.
    pub fn delete(mut self) -> io::Result<()> {
        self.owned = false;
        delete(&self.path)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            let _ = delete(&self.path);
        }
    }
}

/// The calling thread inside another namespace; see [`Netns::enter`].
pub struct Entered {
    origin: Option<File>,
}

impl Entered {
    /// Returns the thread to its original namespace, reporting failure: a
    /// thread left inside would open its later sockets there.
    pub fn leave(mut self) -> io::Result<()> {
        match self.origin.take() {
            Some(origin) => setns(origin.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                io::Error::new(
                    io::Error::from(e).kind(),
                    format!("returning to the original network namespace: {e}"),
                )
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        // Reached without `leave` only while unwinding or when the caller
        // does not care; nothing can be reported from here.
        if let Some(origin) = self.origin.take() {
            let _ = setns(origin.as_fd(), CloneFlags::CLONE_NEWNET);
        }
    }
}

/// Makes `dir` a shared mount point of its own, as `ip netns add` does.
/// Runtimes (iproute2, podman, the CNI libraries) do the same the first
/// time they need the directory; a bind mount they make over it later
/// would hide the namespaces already mounted in it, which then could never
/// be unmounted by path (the test suite leaked namespaces that way on a
/// fresh machine). Done once per process: two binds made at the same time
/// would stack.
fn ensure_netns_dir(dir: &Path) -> io::Result<()> {
    static READY: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut ready = READY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *ready {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let share = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match share() {
        Ok(()) => {}
        // Not a mount point yet.
        Err(nix::Error::EINVAL) => {
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(nix_io)?;
            share().map_err(nix_io)?;
        }
        Err(e) => return Err(nix_io(e)),
    }
    *ready = true;
    Ok(())
}

/// The cookie of the calling thread's network namespace
/// (`SO_NETNS_COOKIE`, Linux 5.14): what eBPF programs see as
/// `bpf_get_netns_cookie` for its sockets.
pub fn current_cookie() -> io::Result<u64> {
    let socket = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket; the kernel writes at most `len` bytes into
    // `cookie`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Removes a named namespace by path; already gone is fine.
pub fn delete(path: &Path) -> io::Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(nix_io(e)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Names of the namespaces under /run/netns starting with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// A command that starts inside the namespace at `ns_path`.
pub fn command_in(ns_path: &Path, program: impl AsRef<OsStr>) -> io::Result<Command> {
    use std::os::unix::process::CommandExt as _;
    let file = File::open(ns_path)?;
    let mut cmd = Command::new(program);
    // SAFETY: setns is async-signal-safe; `file` lives in the closure.
    unsafe {
        cmd.pre_exec(move || setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(nix_io));
    }
    Ok(cmd)
}

fn set_loopback_up() -> io::Result<()> {
    // SIOCSIFFLAGS on a throwaway socket: the one ioctl needed, no runtime.
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(nix_io)?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: a valid socket and an ifreq naming "lo"; the kernel reads
    // and writes only the ifreq.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_path_is_not_a_netns() {
        let err = Netns::open(Path::new("/nonexistent/netns")).expect_err("missing");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("cannot open"), "{err}");
    }

    #[test]
    fn a_regular_file_is_not_a_netns() {
        let err = Netns::open(Path::new("/proc/self/status")).expect_err("not nsfs");
        assert!(err.to_string().contains("not a namespace file"), "{err}");
    }

    #[test]
    fn other_namespace_kinds_are_refused() {
        let err = Netns::open(Path::new("/proc/self/ns/uts")).expect_err("uts");
        assert!(err.to_string().contains("not a network namespace"), "{err}");
    }

    #[test]
    fn the_own_netns_opens_and_is_not_deleted() {
        // Readable without privileges; entering it is not tested here.
        let ns = Netns::open(Path::new("/proc/self/ns/net")).expect("own netns");
        assert_eq!(ns.name(), "net");
        drop(ns);
        assert!(Path::new("/proc/self/ns/net").exists());
    }
}
