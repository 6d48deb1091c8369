//! `sluice demo`: one node, a few pods, real packets.
//!
//! Everything lives in network namespaces named `sluice-demo-*` and under
//! one state directory, so a crashed earlier run is cleaned up by the next.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};
use sluice_controller::{
    counters,
    lab::{
        agent_proc::{AgentOptions, AgentProcess},
        cni::{sluice_netconf, CniCall},
        netns::{self, Netns},
        probe::{self, EchoServer},
    },
};

const PREFIX: &str = "sluice-demo";
const NODE: &str = "demo";
const PORT: u16 = 8080;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// How many pods.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=20))]
    pods: u8,
    /// Pod CIDR of the demo node.
    #[arg(long, default_value = "10.200.0.0/24")]
    pod_cidr: String,
    /// Where the demo keeps its state and logs.
    #[arg(long, default_value = "/tmp/sluice-demo")]
    dir: PathBuf,
    /// Leave the node and pods running (remove with `sluice demo --down`).
    #[arg(long)]
    keep: bool,
    /// Remove what an earlier `--keep` run left, then exit.
    #[arg(long)]
    down: bool,
}

struct Pod {
    name: String,
    ns: Netns,
    ip: IpAddr,
}

fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the sluice binary")?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

fn agent_options(args: &DemoArgs, node_ns: &Path) -> anyhow::Result<AgentOptions> {
    Ok(AgentOptions {
        binary: bin_dir()?.join("sluice-agent"),
        node_name: NODE.into(),
        pod_cidr: args.pod_cidr.clone(),
        state_dir: args.dir.join("state"),
        socket: args.dir.join("agent.sock"),
        netns: Some(node_ns.to_owned()),
        log: args.dir.join("agent.log"),
        extra_args: Vec::new(),
    })
}

fn netconf(args: &DemoArgs) -> serde_json::Value {
    sluice_netconf("sluice-demo", "1.1.0", &args.dir.join("agent.sock"))
}

/// Removes whatever a previous run left: pods (CNI DEL), agent pins, the
/// namespaces and the state directory.
fn teardown(args: &DemoArgs) -> anyhow::Result<()> {
    let node_ns_name = format!("{PREFIX}-node");
    let node_path = Path::new(netns::NETNS_DIR).join(&node_ns_name);
    let cni = bin_dir()?.join("sluice-cni");
    if node_path.exists() {
        for name in netns::list(&format!("{PREFIX}-pod-")) {
            let ns = Path::new(netns::NETNS_DIR).join(&name);
            // Best effort: the agent may be gone; the veth dies with the netns.
            let _ = CniCall::new(&cni, "DEL", netconf(args))
                .run_in(&node_path)
                .container(&name, &ns.display().to_string(), "eth0")
                .invoke();
        }
        // A `--keep` run left its agent running; stop it before uninstalling.
        if let Some(pid) = std::fs::read_to_string(args.dir.join("agent.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("sluice-agent"))
            })
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        let mut agent = AgentProcess::existing(agent_options(args, &node_path)?);
        agent.uninstall().context("uninstalling the demo agent")?;
    }
    for name in netns::list(PREFIX) {
        netns::delete(&Path::new(netns::NETNS_DIR).join(&name))
            .with_context(|| format!("deleting netns {name}"))?;
    }
    match std::fs::remove_dir_all(&args.dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", args.dir.display()))
        }
        _ => Ok(()),
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    teardown(&args)?;
    if args.down {
        println!("demo removed");
        return Ok(());
    }
    let result = bring_up_and_probe(&args);
    if !args.keep || result.is_err() {
        teardown(&args)?;
    }
    result
}

fn bring_up_and_probe(args: &DemoArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let node = Netns::create(&format!("{PREFIX}-node"))?.keep();
    let mut agent = AgentProcess::spawn(agent_options(args, node.path())?)?;
    if let Some(pid) = agent.pid() {
        std::fs::write(args.dir.join("agent.pid"), pid.to_string())?;
    }
    agent
        .wait_ready(Duration::from_secs(20))
        .map_err(|log| anyhow!("the agent did not come up: {log}"))?;
    println!(
        "node {NODE}: agent up in netns {}, pod CIDR {}",
        node.name(),
        args.pod_cidr
    );

    let cni = bin_dir()?.join("sluice-cni");
    let mut pods = Vec::new();
    for i in 0..args.pods {
        let name = format!("{PREFIX}-pod-{}", (b'a' + i) as char);
        let ns = Netns::create(&name)?.keep();
        let started = Instant::now();
        let out = CniCall::new(&cni, "ADD", netconf(args))
            .run_in(node.path())
            .container(&name, &ns.path().display().to_string(), "eth0")
            .invoke()?;
        if !out.success {
            bail!(
                "sluice-cni ADD for {name} failed: {}{}",
                out.stdout,
                out.stderr
            );
        }
        let result = out.json().context("sluice-cni printed no JSON result")?;
        let ip: IpAddr = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .context("no address in the CNI result")?;
        let host_if = result["interfaces"][0]["name"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        println!(
            "pod {name}: {ip} via {host_if} (CNI ADD {} ms)",
            started.elapsed().as_millis()
        );
        pods.push(Pod { name, ns, ip });
    }

    let _servers: Vec<EchoServer> = pods
        .iter()
        .map(|p| EchoServer::start(&p.ns, SocketAddr::new(p.ip, PORT)))
        .collect::<Result<_, _>>()?;

    let timeout = Duration::from_secs(1);
    println!("\nreachability (TCP/UDP port {PORT}, ICMP): ok = all three answered");
    print!("{:<18}", "from \\ to");
    for p in &pods {
        print!("{:<18}", p.name.trim_start_matches(&format!("{PREFIX}-")));
    }
    println!();
    let mut failures = 0;
    let sources: Vec<(&str, &Netns)> = std::iter::once(("node (host)", &node))
        .chain(
            pods.iter()
                .map(|p| (p.name.trim_start_matches(&format!("{PREFIX}-")), &p.ns)),
        )
        .collect();
    for (label, from) in sources {
        print!("{label:<18}");
        for to in &pods {
            if std::ptr::eq(from, &to.ns) {
                print!("{:<18}", "-");
                continue;
            }
            let dst = SocketAddr::new(to.ip, PORT);
            let tcp = probe::tcp(from, dst, timeout);
            let udp = probe::udp(from, dst, timeout);
            let icmp = probe::icmp(from, to.ip, timeout);
            let cell = if tcp && udp && icmp {
                "ok".to_string()
            } else {
                failures += 1;
                format!("FAIL t{} u{} i{}", tcp as u8, udp as u8, icmp as u8)
            };
            print!("{cell:<18}");
        }
        println!();
    }
    println!("\ndataplane counters (node {NODE}):");
    let pin_dir = sluice_controller::dataplane::pin_dir(Path::new("/sys/fs/bpf/sluice"), NODE);
    crate::print_counters(&counters::read(&pin_dir)?);
    if failures > 0 {
        bail!(
            "{failures} pairs could not talk; agent log: {}",
            args.dir.join("agent.log").display()
        );
    }
    if args.keep {
        println!(
            "\nleft running; try: ip netns exec {PREFIX}-pod-a ping {}",
            pods[1].ip
        );
        println!("remove with: sluice demo --down");
        agent.detach();
    } else {
        agent.stop();
    }
    Ok(())
}
