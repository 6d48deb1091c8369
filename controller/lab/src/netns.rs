//! Named network namespaces, made the way iproute2 makes them (a bind mount
//! of the namespace file under /run/netns), so `ip netns` shows them.

use std::{
    fs::File,
    io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    process::Command,
};

use nix::{
    mount::{mount, umount2, MntFlags, MsFlags},
    sched::{setns, unshare, CloneFlags},
};

pub const NETNS_DIR: &str = "/run/netns";

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    keep: bool,
}

impl Netns {
    /// Creates `/run/netns/<name>`; fails if it already exists.
    pub fn create(name: &str) -> io::Result<Self> {
        let dir = Path::new(NETNS_DIR);
        std::fs::create_dir_all(dir)?;
        let path = dir.join(name);
        File::options().write(true).create_new(true).open(&path)?;
        let target = path.clone();
        // unshare() affects only the calling thread, so do it on a
        // throwaway thread and keep the namespace alive by bind-mounting it.
        let made = std::thread::spawn(move || -> io::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(nix_io)?;
            mount(
                Some("/proc/thread-self/ns/net"),
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
            name: name.to_owned(),
            path,
            keep: false,
        };
        // Loopback up, as in any fresh network namespace a runtime prepares.
        ns.run(set_loopback_up)??;
        Ok(ns)
    }

    /// Refers to an existing named namespace without owning it.
    pub fn existing(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            path: Path::new(NETNS_DIR).join(name),
            keep: true,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the namespace in place when dropped.
    pub fn keep(mut self) -> Self {
        self.keep = true;
        self
    }

    /// Runs `f` on a thread inside the namespace. Sockets opened there stay
    /// in the namespace after `f` returns.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        let file = File::open(&self.path)?;
        std::thread::spawn(move || -> io::Result<T> {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(nix_io)?;
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("thread in netns panicked"))?
    }

    /// A command that starts inside the namespace (network only; the mount
    /// namespace stays the host's, so bpffs pins remain visible).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> io::Result<Command> {
        command_in(&self.path, program)
    }

    /// Runs `ip ARGS` (iproute2) inside the namespace; stderr becomes the
    /// error. Scaffolding for tests and benchmarks only: product code
    /// configures links over netlink.
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

    pub fn delete(mut self) -> io::Result<()> {
        self.keep = true;
        delete(&self.path)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.keep {
            let _ = delete(&self.path);
        }
    }
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

pub fn command_in(ns_path: &Path, program: impl AsRef<std::ffi::OsStr>) -> io::Result<Command> {
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
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    use std::os::fd::AsRawFd as _;
    // SAFETY: valid socket and a zeroed ifreq naming "lo".
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
