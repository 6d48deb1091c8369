//! What the numbers were measured on: a report without it compares
//! nothing.

/// Lines for the report's header: CPU, memory, kernel, the build.
pub fn describe() -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / (1024.0 * 1024.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let virt = if cpuinfo.contains(" hypervisor") {
        ", virtual machine"
    } else {
        ""
    };
    let mut lines = vec![
        format!("Machine: {cpus} vCPU {model}{virt}, {mem_gib:.0} GiB, Linux {kernel}"),
        format!(
            "Build: sluice {} ({}), user space {}",
            env!("CARGO_PKG_VERSION"),
            std::env::var("SLUICE_BENCH_COMMIT").unwrap_or_else(|_| "commit unknown".into()),
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        ),
    ];
    if let Ok(now) = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
    {
        lines.push(format!(
            "Run: {}",
            String::from_utf8_lossy(&now.stdout).trim()
        ));
    }
    lines
}
