//! `sluice install-cni` and `sluice uninstall-cni`: what the Helm chart's
//! init container and preStop hook run on every node. Installing copies
//! `sluice-cni` into the host's CNI bin directory, with the reference
//! plugins a CRI runtime needs beside it when the host lacks them, then
//! writes the network config; kubelet's runtime picks up the first config
//! of its conf directory, so the config comes last, once everything it
//! names is in place. Every file is replaced atomically: runtimes read
//! the directories while we write.

use std::path::{Path, PathBuf};

use serde_json::json;
use sluice_cni::config::CniVersion;

/// The network config's file name: sorts before the usual `10-*` ones, so
/// the runtime picks it first.
pub const CONFLIST: &str = "05-sluice.conflist";
/// The network's name, as runtimes report it.
pub const NETWORK_NAME: &str = "sluice";
/// The config version written unless asked otherwise: the newest the
/// runtimes users run accept (containerd 1.6/1.7 and CRI-O with libcni
/// older than 1.2 refuse a 1.1.0 result).
pub const DEFAULT_CNI_VERSION: &str = "1.0.0";

/// Reference plugins installed beside sluice-cni when the host has none:
/// the CRI plugin sets up every sandbox's `lo` with `loopback`, and
/// `portmap` (chained after sluice-cni) serves hostPorts.
const COMPANIONS: [&str; 2] = ["loopback", "portmap"];

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("unsupported CNI version {0:?}: want one of {versions}", versions = sluice_cni::config::SUPPORTED_VERSIONS.join(", "))]
    Version(String),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Debug)]
pub struct InstallOptions {
    /// The host's CNI bin directory (`/opt/cni/bin`, mounted).
    pub bin_dir: PathBuf,
    /// The host's CNI conf directory (`/etc/cni/net.d`, mounted).
    pub conf_dir: PathBuf,
    pub cni_version: String,
    /// The agent's socket, as the plugin sees it on the host.
    pub agent_socket: PathBuf,
    /// The `sluice-cni` binary to install.
    pub plugin: PathBuf,
    /// Where the image keeps the reference plugins.
    pub companions_dir: PathBuf,
}

/// What an install did.
#[derive(Debug, PartialEq, Eq)]
pub struct Installed {
    pub config: PathBuf,
    /// Reference plugins copied because the host had none.
    pub companions: Vec<String>,
    /// Reference plugins neither on the host nor in the image.
    pub missing: Vec<String>,
}

/// The network config: sluice-cni, then portmap for hostPorts when it is
/// there to run.
pub fn conflist(version: CniVersion, agent_socket: &Path, portmap: bool) -> serde_json::Value {
    let mut plugins = vec![json!({
        "type": "sluice-cni",
        "agentSocket": agent_socket.display().to_string(),
    })];
    if portmap {
        plugins.push(json!({
            "type": "portmap",
            "capabilities": {"portMappings": true},
        }));
    }
    json!({
        "cniVersion": version.as_str(),
        "name": NETWORK_NAME,
        "plugins": plugins,
    })
}

pub fn install(options: &InstallOptions) -> Result<Installed, InstallError> {
    let version = CniVersion::parse(&options.cni_version)
        .ok_or_else(|| InstallError::Version(options.cni_version.clone()))?;
    copy_executable(&options.plugin, &options.bin_dir.join("sluice-cni"))?;
    let mut companions = Vec::new();
    let mut missing = Vec::new();
    for name in COMPANIONS {
        let target = options.bin_dir.join(name);
        if target.exists() {
            continue;
        }
        let source = options.companions_dir.join(name);
        if source.exists() {
            copy_executable(&source, &target)?;
            companions.push(name.to_owned());
        } else {
            missing.push(name.to_owned());
        }
    }
    let portmap = options.bin_dir.join("portmap").exists();
    let mut text = serde_json::to_vec_pretty(&conflist(version, &options.agent_socket, portmap))
        .unwrap_or_default();
    text.push(b'\n');
    let config = options.conf_dir.join(CONFLIST);
    sluice_sys::fs::write_atomic(&config, &text, 0o644).map_err(|source| InstallError::Write {
        path: config.clone(),
        source,
    })?;
    Ok(Installed {
        config,
        companions,
        missing,
    })
}

/// Removes the network config, so the runtime stops sending new pods to a
/// node without an agent; the binaries stay (pods still need DEL). Returns
/// whether there was one.
pub fn uninstall(conf_dir: &Path) -> Result<bool, InstallError> {
    let config = conf_dir.join(CONFLIST);
    match std::fs::remove_file(&config) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(InstallError::Write {
            path: config,
            source,
        }),
    }
}

fn copy_executable(from: &Path, to: &Path) -> Result<(), InstallError> {
    let bytes = std::fs::read(from).map_err(|source| InstallError::Read {
        path: from.to_owned(),
        source,
    })?;
    sluice_sys::fs::write_atomic(to, &bytes, 0o755).map_err(|source| InstallError::Write {
        path: to.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dirs {
        root: PathBuf,
        options: InstallOptions,
    }

    impl Dirs {
        fn new(name: &str) -> Self {
            let root = std::env::temp_dir()
                .join(format!("sluice-install-cni-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            let image = root.join("image");
            std::fs::create_dir_all(image.join("cni")).expect("image dir");
            std::fs::write(image.join("sluice-cni"), b"plugin v2").expect("plugin");
            std::fs::write(image.join("cni").join("loopback"), b"loopback").expect("loopback");
            std::fs::write(image.join("cni").join("portmap"), b"portmap").expect("portmap");
            let options = InstallOptions {
                bin_dir: root.join("host/opt/cni/bin"),
                conf_dir: root.join("host/etc/cni/net.d"),
                cni_version: DEFAULT_CNI_VERSION.to_owned(),
                agent_socket: "/var/run/sluice/sluice.sock".into(),
                plugin: image.join("sluice-cni"),
                companions_dir: image.join("cni"),
            };
            Self { root, options }
        }
    }

    impl Drop for Dirs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn installs_the_plugin_what_the_host_lacks_and_then_the_config() {
        use std::os::unix::fs::PermissionsExt as _;
        let dirs = Dirs::new("fresh");
        let bin = &dirs.options.bin_dir;
        std::fs::create_dir_all(bin).expect("bin dir");
        // The host has its own loopback: it stays.
        std::fs::write(bin.join("loopback"), b"host loopback").expect("host loopback");
        std::fs::write(bin.join("sluice-cni"), b"plugin v1").expect("old plugin");
        let installed = install(&dirs.options).expect("install");
        assert_eq!(installed.companions, ["portmap"]);
        assert!(installed.missing.is_empty());
        assert_eq!(
            std::fs::read(bin.join("sluice-cni")).expect("plugin"),
            b"plugin v2"
        );
        assert_eq!(
            std::fs::read(bin.join("loopback")).expect("lo"),
            b"host loopback"
        );
        let mode = std::fs::metadata(bin.join("portmap"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&installed.config).expect("config"))
                .expect("json");
        assert_eq!(config["cniVersion"], "1.0.0");
        assert_eq!(config["name"], NETWORK_NAME);
        assert_eq!(config["plugins"][0]["type"], "sluice-cni");
        assert_eq!(
            config["plugins"][0]["agentSocket"],
            "/var/run/sluice/sluice.sock"
        );
        assert_eq!(config["plugins"][1]["type"], "portmap");
        assert_eq!(config["plugins"][1]["capabilities"]["portMappings"], true);

        assert!(uninstall(&dirs.options.conf_dir).expect("uninstall"));
        assert!(!installed.config.exists());
        assert!(
            bin.join("sluice-cni").exists(),
            "DEL still needs the plugin"
        );
        assert!(!uninstall(&dirs.options.conf_dir).expect("again: nothing to do"));
    }

    #[test]
    fn without_portmap_anywhere_the_chain_is_sluice_alone() {
        let mut dirs = Dirs::new("bare");
        dirs.options.companions_dir = dirs.root.join("nowhere");
        let installed = install(&dirs.options).expect("install");
        assert_eq!(installed.missing, ["loopback", "portmap"]);
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&installed.config).expect("config"))
                .expect("json");
        assert_eq!(config["plugins"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn a_bad_version_or_a_missing_plugin_writes_no_config() {
        let mut dirs = Dirs::new("bad");
        dirs.options.cni_version = "1.2.0".into();
        let err = install(&dirs.options).unwrap_err();
        assert!(err.to_string().contains("0.4.0, 1.0.0, 1.1.0"), "{err}");
        dirs.options.cni_version = DEFAULT_CNI_VERSION.into();
        dirs.options.plugin = dirs.root.join("no-such-plugin");
        assert!(matches!(
            install(&dirs.options),
            Err(InstallError::Read { .. })
        ));
        assert!(!dirs.options.conf_dir.join(CONFLIST).exists());
    }
}
