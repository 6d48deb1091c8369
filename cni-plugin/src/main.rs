//! `sluice-cni`: reads the CNI environment and stdin, prints a result or a
//! CNI error object on stdout. Logs go to stderr (`SLUICE_CNI_LOG`, default
//! `warn`): stdout belongs to the CNI protocol.

use std::{
    io::{self, Read, Write},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
};

use sluice_cni::{config::reply_version, error::ErrorObject, Error};

/// Set by the panic hook once it has printed its error object, so nothing
/// else is printed after it (a panic inside a tokio task does not unwind
/// through `main`, and the command then fails a second time).
static PANICKED: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    init_logging();
    let mut stdin = Vec::new();
    // One byte past the limit tells `run` that there was more.
    let read = io::stdin()
        .lock()
        .take(sluice_cni::MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut stdin);
    let version = reply_version(&stdin).as_str();
    install_panic_hook(version);

    let outcome = match read {
        Ok(_) => sluice_cni::run(std::env::vars_os(), &stdin),
        Err(e) => Err(Error::Io {
            context: "reading the network config from stdin".to_string(),
            source: e,
        }),
    };
    if PANICKED.load(Ordering::SeqCst) {
        return ExitCode::FAILURE;
    }
    match outcome {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(out)) => match emit(&out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice-cni: writing the result: {e}");
                ExitCode::FAILURE
            }
        },
        Err(err) => {
            tracing::debug!(error = %err.details(), "failed");
            if let Err(e) = emit(&err.to_object(version).to_json()) {
                eprintln!("sluice-cni: writing the error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn emit(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()
}

/// Any panic still answers with a CNI error object (code 999).
fn install_panic_hook(version: &'static str) {
    std::panic::set_hook(Box::new(move |info| {
        if PANICKED.swap(true, Ordering::SeqCst) {
            return;
        }
        let details = info.to_string();
        eprintln!("sluice-cni: {details}");
        let object = ErrorObject::internal(version, "internal error (panic)", details);
        let _ = emit(&object.to_json());
    }));
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_CNI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Only fails if a subscriber is already set, which nothing else does.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(false)
        .try_init();
}
